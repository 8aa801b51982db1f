#!/usr/bin/env python3
"""One MQTT session of a device, driven line by line: a test's raw client.

Connects with paho-mqtt (MQTT 5 or 3.1.1) over mutual TLS with the client id
given, then reads JSON commands from stdin, one per line:

    {"sub": "<topic filter>"}                    subscribe at QoS 1
    {"pub": "<topic>", "payload": "<text>"}      publish at QoS 1

and reports on stdout, one JSON object per line:

    {"event": "connected"}
    {"event": "suback", "filter": ..., "granted": <reason code or QoS>}
    {"event": "puback", "topic": ..., "reason": <reason code, 0 = success>}
    {"event": "message", "topic": ..., "payload": "<text>"}
    {"event": "disconnected", "reason": <reason code>}

The script ends when stdin closes, or after WATCHDOG seconds.

Requires ``paho-mqtt==2.1.0`` (``pip install -r tests/requirements.txt``).
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import ssl
import sys
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

WATCHDOG = 300

lock = threading.RLock()


def emit(event: dict) -> None:
    with lock:
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()


def reason_value(rc) -> int:
    return rc.value if hasattr(rc, "value") else int(rc)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="localhost")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cafile", required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--client-id", required=True)
    p.add_argument("--protocol", choices=["5", "311"], default="5")
    args = p.parse_args()
    faulthandler.dump_traceback_later(WATCHDOG, exit=True)

    v5 = args.protocol == "5"
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=args.client_id,
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
    )
    ctx = ssl.create_default_context(cafile=args.cafile)
    ctx.load_cert_chain(args.cert, args.key)
    client.tls_set_context(ctx)
    pending_subs: dict[int, str] = {}
    pending_pubs: dict[int, str] = {}
    connected = threading.Event()

    def on_connect(_c, _u, _flags, rc, _props):
        if reason_value(rc) == 0:
            emit({"event": "connected"})
            connected.set()
        else:
            emit({"event": "refused", "reason": reason_value(rc)})
            connected.set()

    # paho calls on_publish holding its own outgoing-message lock, which
    # publish() takes too: so publish() and subscribe() are called without
    # holding `lock`, and an acknowledgement that comes back before its mid
    # is recorded waits in `early` until it is.
    early_subs: dict[int, list] = {}
    early_pubs: dict[int, int] = {}

    def on_subscribe(_c, _u, mid, rcs, _props):
        granted = [reason_value(r) for r in rcs]
        with lock:
            if mid in pending_subs:
                emit({"event": "suback", "filter": pending_subs.pop(mid), "granted": granted})
            else:
                early_subs[mid] = granted

    def on_publish(_c, _u, mid, rc, _props):
        with lock:
            if mid in pending_pubs:
                emit({"event": "puback", "topic": pending_pubs.pop(mid), "reason": reason_value(rc)})
            else:
                early_pubs[mid] = reason_value(rc)

    def on_message(_c, _u, msg):
        emit({"event": "message", "topic": msg.topic, "payload": msg.payload.decode("utf-8", "replace")})

    def on_disconnect(_c, _u, _flags, rc, _props):
        emit({"event": "disconnected", "reason": reason_value(rc)})

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_publish = on_publish
    client.on_message = on_message
    client.on_disconnect = on_disconnect
    client.connect(args.host, args.port, keepalive=30)
    client.loop_start()
    if not connected.wait(15):
        emit({"event": "refused", "reason": -1})
        return 1
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        cmd = json.loads(line)
        if "sub" in cmd:
            _, mid = client.subscribe(cmd["sub"], qos=1)
            with lock:
                if mid in early_subs:
                    emit({"event": "suback", "filter": cmd["sub"], "granted": early_subs.pop(mid)})
                else:
                    pending_subs[mid] = cmd["sub"]
        elif "pub" in cmd:
            info = client.publish(cmd["pub"], cmd.get("payload", "").encode(), qos=1)
            with lock:
                if info.mid in early_pubs:
                    emit({"event": "puback", "topic": cmd["pub"], "reason": early_pubs.pop(info.mid)})
                else:
                    pending_pubs[info.mid] = cmd["pub"]
    client.disconnect()
    client.loop_stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
