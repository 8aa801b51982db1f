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
  {"op": "publish", "topic": "t", "qos": 1, "size": n}
                                            any publish (payload "x", or n bytes);
                                            reports the PUBACK's reason code
  {"op": "publish", ..., "wait": false}     publishes and goes on at once
  {"op": "await", "step": k}                the PUBACK of earlier step k, as for a publish
  {"op": "subscribe", "filter": "f"}        reports the SUBACK's reason codes
  {"op": "sleep", "seconds": s}

Each step prints one JSON line: {"step": i, "topic": reply topic, "payload": {...}}
for a request, {"step": i, "puback": code, "reason": text, "refused": bool} for a
QoS 1 publish, {"step": i, "codes": [text], "values": [code]} for a subscribe;
"at" is the wall-clock time (seconds) the step's answer came.
Silence is never a refusal: a PUBACK or SUBACK that does not come within the
timeout gives "puback": null / "codes": null and "timeout": "PUBACK" / "SUBACK"
(and "refused" is absent), so a server that never answers cannot pass for one
that refuses. Every line also has "disconnected" and, once the server has
closed the connection, "disconnect": {"code", "reason", "from_server"} (the
MQTT 5 DISCONNECT reason code; from_server is false when the connection just
ended). "$last" is the ownership token of the most recent accepted create/csr
step. Exit status 0 unless the connection could not be made.
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
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode


class Client(mqtt.Client):
    """paho's client, reading a server DISCONNECT's reason code itself.

    paho-mqtt 2.1.0 reads the reason code only when properties follow it
    (remaining length > 2) and reports "Normal disconnection" otherwise; MQTT 5
    (3.14.2.1) puts the reason code in the first byte whenever the remaining
    length is at least 1.
    """

    server_disconnect_code: "int | None" = None

    def _handle_disconnect(self) -> None:
        if self._in_packet["remaining_length"] >= 1:
            self.server_disconnect_code = self._in_packet["packet"][0]
        elif self.server_disconnect_code is None:
            self.server_disconnect_code = 0
        super()._handle_disconnect()


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
    client = Client(CallbackAPIVersion.VERSION2, client_id=args.client_id, protocol=proto)
    ctx = ssl.create_default_context(cafile=args.cafile)
    ctx.load_cert_chain(args.cert, args.key)
    client.tls_set_context(ctx)

    inbox: "queue.Queue[tuple[str, bytes]]" = queue.Queue()
    acks: "queue.Queue[tuple[str, int, object]]" = queue.Queue()
    connected = threading.Event()
    gone = threading.Event()
    state = {"rc": None, "disconnect": None}

    def on_connect(c, userdata, flags, rc, props=None):
        state["rc"] = str(rc)
        connected.set()

    def on_disconnect(c, userdata, flags, rc, props=None):
        # Only the first: paho reconnects, and later drops say nothing new.
        if state["disconnect"] is None:
            from_server = bool(getattr(flags, "is_disconnect_packet_from_server", False))
            code = getattr(rc, "value", rc)
            reason = str(rc)
            if from_server and c.server_disconnect_code is not None:
                code = c.server_disconnect_code
                reason = str(ReasonCode(PacketTypes.DISCONNECT, identifier=code))
            state["disconnect"] = {"code": code, "reason": reason, "from_server": from_server}
        gone.set()

    def on_message(c, userdata, msg):
        inbox.put((msg.topic, msg.payload))

    def on_subscribe(c, userdata, mid, codes, props=None):
        acks.put(("suback", mid, ([str(x) for x in codes], [getattr(x, "value", x) for x in codes])))

    def on_publish(c, userdata, mid, rc, props=None):
        acks.put(("puback", mid, (str(rc), getattr(rc, "value", rc))))

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

    # Acknowledgements that came while another was awaited: (kind, mid) -> value.
    early: "dict[tuple[str, int], object]" = {}

    def wait_ack(kind: str, mid: int, timeout: float):
        """The acknowledgement of packet `mid`, or None on timeout."""
        if (kind, mid) in early:
            return early.pop((kind, mid))
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                got, got_mid, value = acks.get(timeout=0.1)
            except queue.Empty:
                # Callbacks run in order on one thread: an acknowledgement
                # that came before the connection ended is already queued.
                if gone.is_set():
                    return None
                continue
            if got == kind and got_mid == mid:
                return value
            early[(got, got_mid)] = value
        return None

    def puback(mid: int, timeout: float) -> dict:
        ack = wait_ack("puback", mid, timeout)
        if ack is None:
            return {"puback": None, "timeout": "PUBACK"}
        reason, code = ack
        return {"puback": code, "reason": reason, "refused": code >= 0x80}

    mids: "dict[int, int]" = {}

    def subscribe(filters: list[str]):
        _, mid = client.subscribe([(f, 1) for f in filters])
        return wait_ack("suback", mid, args.timeout)

    def request(topic: str, payload: bytes, replies: str) -> dict:
        if subscribe([replies + "/accepted", replies + "/rejected"]) is None:
            return {"timeout": "SUBACK"}
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
            qos = step.get("qos", 1)
            payload = b"x" * step["size"] if "size" in step else step.get("payload", "x")
            info = client.publish(step["topic"], payload, qos=qos)
            mids[i] = info.mid
            if not step.get("wait", True):
                out = {}
            elif qos == 0:
                # No acknowledgement exists; give the server time to react.
                time.sleep(1)
                out = {}
            else:
                out = puback(info.mid, 3)
        elif op == "await":
            out = puback(mids[step["step"]], args.timeout)
        elif op == "subscribe":
            ack = subscribe([step["filter"]])
            if ack is None:
                out = {"codes": None, "values": None, "timeout": "SUBACK"}
            else:
                out = {"codes": ack[0], "values": ack[1]}
        elif op == "sleep":
            time.sleep(step["seconds"])
            out = {}
        else:
            raise SystemExit(f"unknown step {op}")
        out["step"] = i
        out["at"] = time.time()
        out["disconnected"] = out.get("disconnected", False) or gone.is_set()
        if state["disconnect"] is not None:
            out["disconnect"] = state["disconnect"]
        print(json.dumps(out), flush=True)
    client.disconnect()
    client.loop_stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
