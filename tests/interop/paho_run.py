"""Runs the Eclipse Paho interoperability suite against one broker, one
process per test with a time limit, and reports each test's outcome.

The suite is not part of Onramp: it is read from its pinned checkout
(../shared/third_party/paho.mqtt.testing by default, or --suite-dir). Each test
runs as `paho_tls_shim.py` in a process of its own, so a test that waits
forever on a broker that behaves differently is stopped at --timeout seconds
and counted as such, and no state leaks from one test into the next.

usage: paho_run.py [--suite v311|v5|all] [--host H] [--port P]
                   [--cert C --key K --ca A] [--timeout S] [--only NAME ...]
                   [--shard K/N] [--json FILE] [--log-dir DIR]

Prints one line per test (`pass`, `fail` or `timeout`, and seconds) and a
total per suite; with --json also writes {suite: {test: outcome}}, where a
test left to another shard is "not-run".
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_SUITE_DIR = os.path.normpath(
    os.path.join(
        HERE, "..", "..", "..", "shared", "third_party", "paho.mqtt.testing", "interoperability"
    )
)
SUITES = {"v311": "client_test.py", "v5": "client_test5.py"}


def test_names(suite_dir, suite_file):
    with open(os.path.join(suite_dir, suite_file), encoding="utf-8") as f:
        return re.findall(r"^\s+def (test\w*)\(self\)", f.read(), re.MULTILINE)


def run_one(args, suite_file, name):
    env = dict(os.environ)
    env["PAHO_TARGET_HOST"] = args.host
    env["PAHO_TARGET_PORT"] = str(args.port)
    if args.cert:
        env["PAHO_TLS_CERT"] = args.cert
        env["PAHO_TLS_KEY"] = args.key
        env["PAHO_TLS_CA"] = args.ca
    cmd = [
        sys.executable,
        os.path.join(HERE, "paho_tls_shim.py"),
        args.suite_dir,
        suite_file,
        "Test." + name,
    ]
    started = time.monotonic()
    try:
        done = subprocess.run(
            cmd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=args.timeout,
        )
        outcome = "pass" if done.returncode == 0 else "fail"
        output = done.stdout.decode("utf-8", "replace")
    except subprocess.TimeoutExpired as e:
        outcome = "timeout"
        output = (e.stdout or b"").decode("utf-8", "replace")
    return outcome, time.monotonic() - started, output


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--suite", choices=["v311", "v5", "all"], default="all")
    parser.add_argument("--suite-dir", default=DEFAULT_SUITE_DIR)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--ca")
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--only", nargs="*", default=[])
    parser.add_argument(
        "--shard",
        default="1/1",
        help="K/N: run only every N-th test of each suite, starting at the K-th",
    )
    parser.add_argument("--json")
    parser.add_argument("--log-dir", help="write each test's output here")
    args = parser.parse_args()
    if args.cert and not (args.key and args.ca):
        parser.error("--cert needs --key and --ca")
    try:
        shard, shards = (int(x) for x in args.shard.split("/"))
        assert 1 <= shard <= shards
    except (ValueError, AssertionError):
        parser.error("--shard takes K/N with 1 <= K <= N")
    if not os.path.isdir(args.suite_dir):
        sys.exit(f"the Paho suite is not at {args.suite_dir} (see --suite-dir)")

    results = {}
    for suite in (["v311", "v5"] if args.suite == "all" else [args.suite]):
        suite_file = SUITES[suite]
        results[suite] = {}
        for index, name in enumerate(test_names(args.suite_dir, suite_file)):
            if args.only and name not in args.only:
                continue
            if index % shards != shard - 1:
                results[suite][name] = "not-run"
                continue
            outcome, seconds, output = run_one(args, suite_file, name)
            results[suite][name] = outcome
            print(f"{suite} {name} {outcome} {seconds:.1f}s", flush=True)
            if args.log_dir:
                os.makedirs(args.log_dir, exist_ok=True)
                with open(os.path.join(args.log_dir, f"{suite}.{name}.log"), "w") as f:
                    f.write(output)
        ran = [o for o in results[suite].values() if o != "not-run"]
        passed = sum(1 for o in ran if o == "pass")
        print(f"{suite} total {passed}/{len(ran)}", flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
