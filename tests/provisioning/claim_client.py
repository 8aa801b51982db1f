#!/usr/bin/env python3
"""A scripted fleet-provisioning client on one MQTT connection (paho-mqtt).

The tests of Onramp's fleet provisioning use it to send requests a device
would, including wrong ones, and to read exactly what came back on the same
connection. Steps are given as one JSON list:

  {"op": "create"}                          CreateKeysAndCertificate ({} payload)
  {"op": "create", "payload": ""}           ... with another raw payload
  {"op": "csr", "csr_file": "path"}         CreateCertificateFromCsr
  {"op": "register", "template": "t", "token": "<literal>|$last",
   "parameters": {...}}                     RegisterThing
  {"op": "publish", "topic": "t"}           any publish; reports whether it was refused
  {"op": "subscribe", "filter": "f"}        reports the granted reason code

Each step prints one JSON line: {"step": i, "topic": reply topic, "payload": {...}}
or {"step": i, "refused": bool, "reason": ...}. "$last" is the ownership token
of the most recent accepted create/csr step. Exit status 0 unless the
connection could not be made.
"""

from __future__ import annotations

import argparse
import json
import queue
import ssl
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="localhost")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--cafile", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--client-id", default="")
    ap.add_argument("--protocol", choices=["5", "3"], default="5")
    ap.add_argument("--steps", required=True, help="JSON list of steps")
    ap.add_argument("--timeout", type=float, default=10.0)
    args = ap.parse_args()
    steps = json.loads(args.steps)

    proto = mqtt.MQTTv5 if args.protocol == "5" else mqtt.MQTTv311
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=args.client_id, protocol=proto)
    ctx = ssl.create_default_context(cafile=args.cafile)
    ctx.load_cert_chain(args.cert, args.key)
    client.tls_set_context(ctx)

    inbox: "queue.Queue[tuple[str, bytes]]" = queue.Queue()
    acks: "queue.Queue[tuple[str, object]]" = queue.Queue()
    connected = threading.Event()
    gone = threading.Event()
    state = {"rc": None}

    def on_connect(c, userdata, flags, rc, props=None):
        state["rc"] = str(rc)
        connected.set()

    def on_disconnect(c, userdata, flags, rc, props=None):
        gone.set()

    def on_message(c, userdata, msg):
        inbox.put((msg.topic, msg.payload))

    def on_subscribe(c, userdata, mid, codes, props=None):
        acks.put(("suback", [str(x) for x in codes]))

    def on_publish(c, userdata, mid, rc, props=None):
        acks.put(("puback", str(rc)))

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.on_message = on_message
    client.on_subscribe = on_subscribe
    client.on_publish = on_publish
    try:
        client.connect(args.host, args.port, keepalive=30)
    except Exception as e:  # noqa: BLE001 - the test reads the reason
        print(json.dumps({"connect": "failed", "error": str(e)}))
        return 2
    client.loop_start()
    if not connected.wait(args.timeout) or state["rc"] not in ("Success", "0"):
        print(json.dumps({"connect": "refused", "rc": state["rc"]}))
        client.loop_stop()
        return 2
    print(json.dumps({"connect": "ok"}), flush=True)

    def subscribe(filters: list[str]) -> list[str]:
        client.subscribe([(f, 1) for f in filters])
        try:
            return acks.get(timeout=args.timeout)[1]
        except queue.Empty:
            return ["timeout"]

    def request(topic: str, payload: bytes, replies: str) -> dict:
        subscribe([replies + "/accepted", replies + "/rejected"])
        client.publish(topic, payload, qos=1)
        deadline = time.time() + args.timeout
        while time.time() < deadline:
            if gone.is_set():
                return {"disconnected": True}
            try:
                t, p = inbox.get(timeout=0.1)
            except queue.Empty:
                continue
            if t.startswith(replies + "/"):
                try:
                    body = json.loads(p) if p else None
                except ValueError:
                    body = p.decode(errors="replace")
                return {"topic": t, "payload": body}
        return {"timeout": True}

    last_token = None
    for i, step in enumerate(steps):
        op = step["op"]
        if op in ("create", "csr"):
            if op == "create":
                topic = "$aws/certificates/create/json"
                payload = step.get("payload", "{}").encode()
            else:
                with open(step["csr_file"]) as f:
                    payload = json.dumps({"certificateSigningRequest": f.read()}).encode()
                topic = "$aws/certificates/create-from-csr/json"
            out = request(topic, payload, topic)
            if out.get("topic", "").endswith("/accepted"):
                last_token = out["payload"].get("certificateOwnershipToken")
        elif op == "register":
            token = step.get("token", "$last")
            if token == "$last":
                token = last_token
            body = {"certificateOwnershipToken": token}
            if "parameters" in step:
                body["parameters"] = step["parameters"]
            topic = f"$aws/provisioning-templates/{step['template']}/provision/json"
            out = request(topic, json.dumps(body).encode(), topic)
        elif op == "publish":
            info = client.publish(step["topic"], step.get("payload", "x"), qos=1)
            try:
                kind, rc = acks.get(timeout=3)
                refused = rc not in ("Success", "0")
                out = {"refused": refused, "reason": rc}
            except queue.Empty:
                out = {"refused": True, "reason": "no PUBACK", "disconnected": gone.is_set()}
            del info
        elif op == "subscribe":
            codes = subscribe([step["filter"]])
            out = {"codes": codes}
        elif op == "sleep":
            time.sleep(step["seconds"])
            out = {}
        else:
            raise SystemExit(f"unknown step {op}")
        out["step"] = i
        out["disconnected"] = out.get("disconnected", False) or gone.is_set()
        print(json.dumps(out), flush=True)
    client.disconnect()
    client.loop_stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
