#!/usr/bin/env python3
"""Interoperability checks of the Onramp MQTT gateway with the paho-mqtt client.

The checks run against a live gateway over MQTT 3.1.1 or MQTT 5 with three
identities enrolled through EST:

* a device with the default least-privilege policy (it may only use
  ``things/<thing>/...`` and ``$aws/things/<thing>/...``),
* two back-end service identities with the broad "backend" policy (subscribe
  ``things/*``, ``$share/*``, ``$aws/events/*``; publish and receive
  ``things/*``). Two are needed because the gateway requires the client id to
  be the thing name, so one identity cannot hold two connections at once.

Each passed check prints ``ok <number> <name>``; the first failure prints
``FAIL ...`` on stderr and the script exits with status 1. Every wait has a
timeout, and a watchdog ends the script if it ever hangs.

Requires ``paho-mqtt==2.1.0`` (``pip install -r tests/requirements.txt``).
"""

from __future__ import annotations

import argparse
import faulthandler
import ipaddress
import json
import secrets
import socket
import ssl
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

# How long any single expected event may take.
TIMEOUT = 10.0
# The whole run is aborted (with a traceback of every thread) after this long.
WATCHDOG = 240

SUBACK_FAILURE_V3 = 0x80
NOT_AUTHORIZED = 135
KEEP_ALIVE_TIMEOUT = 141
DISCONNECT_PACKET = 0xE0
# Spacing between two CONNECTs of one identity: the gateway admits about one
# CONNECT per second per thing (burst 5), as AWS IoT Core does.
RECONNECT_SPACING = 1.1


class CheckFailed(Exception):
    pass


def require(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


@dataclass(frozen=True)
class Identity:
    name: str
    cert: str
    key: str


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Pacer:
    """Keeps CONNECTs of one identity at least RECONNECT_SPACING apart."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}

    def before_connect(self, name: str) -> None:
        last = self._last.get(name)
        if last is not None:
            gap = RECONNECT_SPACING - (time.monotonic() - last)
            if gap > 0:
                # The gateway's per-thing connect rate limit is a clock, not an
                # event that could be waited for: sleeping is the right tool here.
                time.sleep(gap)
        self._last[name] = time.monotonic()


class Conn:
    """One paho client connection whose callbacks are turned into awaitable events."""

    def __init__(
        self,
        args: argparse.Namespace,
        ident: Identity,
        label: str,
        *,
        persistent: bool = False,
        keepalive: int = 30,
        will: tuple[str, bytes, int] | None = None,
    ) -> None:
        self.args = args
        self.ident = ident
        self.label = label
        self.v5 = args.protocol == "5"
        self.persistent = persistent
        self.keepalive = keepalive
        self.session_present: bool | None = None
        self.connack_properties: Any = None
        self.connected_at: float | None = None
        self.open = False
        self._cond = threading.Condition()
        self._events: list[tuple[str, Any]] = []

        kwargs: dict[str, Any] = {}
        if not self.v5:
            kwargs["clean_session"] = not persistent
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=ident.name,
            protocol=mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311,
            # A lost connection must be seen by the checks, not silently repaired.
            reconnect_on_failure=False,
            **kwargs,
        )
        self.client.tls_set(ca_certs=args.cafile, certfile=ident.cert, keyfile=ident.key)
        if will is not None:
            topic, payload, qos = will
            self.client.will_set(topic, payload, qos=qos, retain=False)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_unsubscribe = self._on_unsubscribe
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect

    # ---- callbacks (run on paho's network thread) ----

    def _push(self, kind: str, data: Any) -> None:
        with self._cond:
            self._events.append((kind, data))
            self._cond.notify_all()

    def _on_connect(self, _c, _u, flags, reason_code, properties) -> None:
        self._push("connect", (flags.session_present, reason_code, properties))

    def _on_subscribe(self, _c, _u, mid, reason_codes, _p) -> None:
        self._push("subscribe", (mid, [rc.value for rc in reason_codes]))

    def _on_unsubscribe(self, _c, _u, mid, _rcs, _p) -> None:
        self._push("unsubscribe", mid)

    def _on_publish(self, _c, _u, mid, reason_code, _p) -> None:
        self._push("publish", (mid, reason_code.value))

    def _on_message(self, _c, _u, msg) -> None:
        self._push("message", Received(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain)))

    def _on_disconnect(self, _c, _u, flags, reason_code, _p) -> None:
        self._push("disconnect", (flags.is_disconnect_packet_from_server, reason_code))

    # ---- waiting ----

    def wait_for(
        self,
        kind: str,
        match: Callable[[Any], bool] = lambda _d: True,
        what: str | None = None,
        timeout: float = TIMEOUT,
    ) -> Any:
        """Removes and returns the first `kind` event that matches, waiting for it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i, (k, data) in enumerate(self._events):
                    if k == kind and match(data):
                        del self._events[i]
                        return data
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise CheckFailed(
                        f"{self.label}: no {what or kind} within {timeout:.0f} s"
                    )
                self._cond.wait(remaining)

    def seen(self, kind: str, match: Callable[[Any], bool] = lambda _d: True) -> list[Any]:
        """The `kind` events received so far that match (left in place)."""
        with self._cond:
            return [d for k, d in self._events if k == kind and match(d)]

    def message(self, match: Callable[[Received], bool], what: str, timeout: float = TIMEOUT) -> Received:
        return self.wait_for("message", match, what, timeout)

    def take_messages(self, match: Callable[[Received], bool]) -> list[Received]:
        with self._cond:
            taken = [d for k, d in self._events if k == "message" and match(d)]
            self._events = [
                (k, d) for k, d in self._events if not (k == "message" and match(d))
            ]
            return taken

    # ---- operations ----

    def connect(self, pacer: Pacer) -> "Conn":
        pacer.before_connect(self.ident.name)
        kwargs: dict[str, Any] = {}
        if self.v5:
            kwargs["clean_start"] = not self.persistent
            if self.persistent:
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = 300
                kwargs["properties"] = props
        try:
            self.client.connect(self.args.host, self.args.port, keepalive=self.keepalive, **kwargs)
        except (OSError, ssl.SSLError) as e:
            raise CheckFailed(f"{self.label}: TCP/TLS connection failed: {e!r}") from e
        self.client.loop_start()
        self.open = True
        session_present, reason, properties = self.wait_for("connect", what="CONNACK")
        self.connected_at = time.monotonic()
        require(
            not reason.is_failure and reason.value == 0,
            f"{self.label}: CONNECT refused: {reason} ({reason.value})",
        )
        self.session_present = bool(session_present)
        self.connack_properties = properties
        return self

    def subscribe(self, filters: list[tuple[str, int]]) -> list[int]:
        result, mid = self.client.subscribe(filters)
        require(result == mqtt.MQTT_ERR_SUCCESS, f"{self.label}: SUBSCRIBE not sent: {result}")
        _, codes = self.wait_for("subscribe", lambda d: d[0] == mid, f"SUBACK for {filters}")
        require(
            len(codes) == len(filters),
            f"{self.label}: SUBACK has {len(codes)} codes for {len(filters)} filters",
        )
        return codes

    def subscribe_granted(self, filters: list[tuple[str, int]]) -> None:
        codes = self.subscribe(filters)
        wanted = [q for _, q in filters]
        require(codes == wanted, f"{self.label}: SUBACK for {filters} granted {codes}, expected {wanted}")

    def unsubscribe(self, topic: str) -> None:
        result, mid = self.client.unsubscribe(topic)
        require(result == mqtt.MQTT_ERR_SUCCESS, f"{self.label}: UNSUBSCRIBE not sent: {result}")
        self.wait_for("unsubscribe", lambda m: m == mid, f"UNSUBACK for {topic}")

    def publish_nowait(self, topic: str, payload: bytes, qos: int, retain: bool = False) -> int:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        require(info.rc == mqtt.MQTT_ERR_SUCCESS, f"{self.label}: PUBLISH to {topic} not sent: {info.rc}")
        return info.mid

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool = False) -> int:
        """Publishes and waits for the PUBACK (QoS 1) or the write (QoS 0); returns the reason code."""
        mid = self.publish_nowait(topic, payload, qos, retain)
        what = "PUBACK" if qos else "confirmation of the write"
        _, reason = self.wait_for("publish", lambda d: d[0] == mid, f"{what} for {topic}")
        return reason

    def publish_ok(self, topic: str, payload: bytes, qos: int, retain: bool = False) -> None:
        reason = self.publish(topic, payload, qos, retain)
        require(reason == 0, f"{self.label}: PUBLISH to {topic} answered with reason {reason}")

    def stop_loop(self, timeout: float = 5.0) -> None:
        def stop() -> None:
            try:
                self.client.loop_stop()
            except Exception:  # the loop may already have ended by itself
                pass

        t = threading.Thread(target=stop, daemon=True)
        t.start()
        t.join(timeout)
        require(not t.is_alive(), f"{self.label}: paho's network loop did not stop within {timeout:.0f} s")

    def disconnect(self) -> None:
        """A clean DISCONNECT, waited for."""
        self.client.disconnect()
        self.wait_for("disconnect", what="completion of DISCONNECT")
        self.stop_loop()
        self.open = False

    def drop(self) -> None:
        """Loses the connection without DISCONNECT: the socket is shut down under paho."""
        self.stop_loop()
        sock = self.client.socket()
        require(sock is not None, f"{self.label}: no socket to drop")
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.close()
        self.open = False

    def close_quietly(self) -> None:
        try:
            if self.open and self.client.is_connected():
                self.client.disconnect()
                self.wait_for("disconnect", timeout=3)
        except Exception:
            pass
        try:
            self.stop_loop(timeout=3)
        except Exception:
            pass
        self.open = False


def read_until_closed(sock: Any, deadline: float) -> tuple[bytes, str | None]:
    """Reads a socket until the peer closes it or the deadline passes.

    Returns what was read and how the connection ended (None if it did not)."""
    sock.settimeout(0.25)
    data = b""
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(4096)
        except (socket.timeout, ssl.SSLWantReadError):
            continue
        except (ssl.SSLEOFError, ConnectionResetError, BrokenPipeError) as e:
            return data, type(e).__name__
        if chunk == b"":
            return data, "EOF"
        data += chunk
    return data, None


class Checks:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.v5 = args.protocol == "5"
        self.device = Identity(args.device_id, args.device_cert, args.device_key)
        self.svc = Identity(args.service_id, args.service_cert, args.service_key)
        self.svc2 = Identity(args.service2_id, args.service2_cert, args.service2_key)
        self.other = args.other_id
        self.nonce = secrets.token_hex(4)
        self.pacer = Pacer()
        self.conns: list[Conn] = []
        self.current = "setup"
        self.passed = 0
        # Long-lived connections shared between checks.
        self.service: Conn | None = None
        self.dev: Conn | None = None

    def open(self, ident: Identity, label: str, **kwargs: Any) -> Conn:
        c = Conn(self.args, ident, f"{label} ({ident.name})", **kwargs)
        self.conns.append(c)
        return c.connect(self.pacer)

    def topic(self, leaf: str) -> str:
        return f"things/{self.device.name}/{leaf}"

    def payload(self, what: str) -> bytes:
        return f"{what}-{self.nonce}".encode()

    def run(self) -> None:
        steps = [
            ("connect", self.check_connect),
            ("own-topic-delivery-qos1-and-qos0", self.check_delivery),
            ("foreign-subscriptions-refused", self.check_foreign_subscriptions),
            ("foreign-publish-refused", self.check_foreign_publish),
            ("retained-for-new-subscriber", self.check_retained),
            ("persistent-session", self.check_persistent_session),
            ("will-on-lost-connection", self.check_will),
            ("shared-subscription", self.check_shared_subscription),
            ("keep-alive-timeout", self.check_keep_alive),
            ("presence-events", self.check_presence),
        ]
        for number, (name, check) in enumerate(steps, start=1):
            self.current = f"{number} {name}"
            detail = check()
            self.passed += 1
            print(f"ok {self.current}" + (f" ({detail})" if detail else ""), flush=True)

    def cleanup(self) -> None:
        for c in self.conns:
            c.close_quietly()

    # 1
    def check_connect(self) -> None:
        self.service = self.open(self.svc, "service")
        self.dev = self.open(self.device, "device")
        for c in (self.service, self.dev):
            require(not c.session_present, f"{c.label}: session_present on a clean start")
        if self.v5:
            props = self.dev.connack_properties
            require(props is not None, "device: CONNACK carried no properties object")
            # Absent means QoS 2 is supported, as it is unless `aws_strict` is set.
            max_qos = getattr(props, "MaximumQoS", 2)
            require(max_qos == 2, f"device: CONNACK Maximum QoS is {max_qos!r}, expected 2 (absent)")
            shared = getattr(props, "SharedSubscriptionAvailable", 1)
            require(shared == 1, f"device: CONNACK Shared Subscription Available is {shared!r}")

    # 2
    def check_delivery(self) -> None:
        assert self.dev and self.service
        cmd = self.topic("cmd")
        self.dev.subscribe_granted([(cmd, 1)])
        p1 = self.payload("cmd-qos1")
        self.service.publish_ok(cmd, p1, 1)
        m = self.dev.message(lambda m: m.topic == cmd and m.payload == p1, f"QoS 1 message on {cmd}")
        require(m.qos == 1, f"device: QoS 1 message on {cmd} arrived with QoS {m.qos}")
        require(not m.retain, f"device: live message on {cmd} has the retain flag")

        notice = self.topic("notice")
        self.dev.subscribe_granted([(notice, 0)])
        p0 = self.payload("notice-qos0")
        self.service.publish_ok(notice, p0, 0)
        m = self.dev.message(lambda m: m.topic == notice and m.payload == p0, f"QoS 0 message on {notice}")
        require(m.qos == 0, f"device: QoS 0 message on {notice} arrived with QoS {m.qos}")

    # 3
    def check_foreign_subscriptions(self) -> None:
        assert self.dev and self.service
        filters = [(f"things/{self.other}/#", 1), ("#", 1)]
        codes = self.dev.subscribe(filters)
        expected = [NOT_AUTHORIZED] * 2 if self.v5 else [SUBACK_FAILURE_V3] * 2
        require(codes == expected, f"device: SUBACK for {filters} was {codes}, expected {expected}")
        # The refused filters were not installed: a message on the other
        # thing's topic does not arrive before a later one on the device's own.
        probe = self.payload("probe")
        self.service.publish_ok(f"things/{self.other}/probe", probe, 1)
        fence = self.payload("fence-3")
        cmd = self.topic("cmd")
        self.service.publish_ok(cmd, fence, 1)
        self.dev.message(lambda m: m.topic == cmd and m.payload == fence, f"fence on {cmd}")
        leaked = self.dev.seen("message", lambda m: m.payload == probe)
        require(not leaked, f"device: received through a refused subscription: {leaked}")

    # 4
    def check_foreign_publish(self) -> str:
        assert self.dev and self.service
        self.service.subscribe_granted([("things/#", 1)])
        foreign = f"things/{self.other}/x"
        forged = self.payload("forged")
        outcome = f"PUBACK reason {NOT_AUTHORIZED}"
        if self.v5:
            reason = self.dev.publish(foreign, forged, 1)
            require(
                reason == NOT_AUTHORIZED,
                f"device: PUBACK for {foreign} has reason {reason}, expected {NOT_AUTHORIZED} (Not authorized)",
            )
        else:
            mid = self.dev.publish_nowait(foreign, forged, 1)
            self.dev.wait_for(
                "disconnect",
                what=f"connection close after publishing to {foreign} (MQTT 3.1.1 has no negative PUBACK)",
            )
            acked = self.dev.seen("publish", lambda d: d[0] == mid)
            require(not acked, f"device: the publish to {foreign} was acknowledged before the close")
            self.dev.stop_loop()
            self.dev.open = False
            self.dev = self.open(self.device, "device")
            outcome = "connection closed"
        # Publishes of one connection are routed in order: once a later message
        # from the device has arrived, a leaked one would have arrived first.
        after = self.topic("after")
        fence = self.payload("fence-4")
        self.dev.publish_ok(after, fence, 1)
        self.service.message(lambda m: m.topic == after and m.payload == fence, f"fence on {after}")
        leaked = self.service.seen("message", lambda m: m.payload == forged)
        require(not leaked, f"service: received the refused publish: {leaked}")
        self.service.unsubscribe("things/#")
        self.service.take_messages(lambda m: True)
        return outcome

    # 5
    def check_retained(self) -> None:
        assert self.dev
        state = self.topic("state")
        value = self.payload("state")
        self.dev.publish_ok(state, value, 1, retain=True)
        watcher = self.open(self.svc2, "late subscriber")
        watcher.subscribe_granted([(state, 1)])
        m = watcher.message(lambda m: m.topic == state, f"retained message on {state}")
        require(m.payload == value, f"late subscriber: retained payload {m.payload!r}, expected {value!r}")
        require(m.retain, f"late subscriber: the retained message on {state} lacks the retain flag")
        watcher.disconnect()
        # An empty retained message clears it.
        self.dev.publish_ok(state, b"", 1, retain=True)

    # 6
    def check_persistent_session(self) -> None:
        assert self.dev
        events = self.topic("events")
        first = self.open(self.svc2, "persistent service", persistent=True)
        first.subscribe_granted([(events, 1)])
        first.disconnect()
        missed = self.payload("while-away")
        self.dev.publish_ok(events, missed, 1)
        again = self.open(self.svc2, "persistent service, reconnected", persistent=True)
        require(again.session_present, f"{again.label}: CONNACK session_present is False")
        m = again.message(lambda m: m.topic == events and m.payload == missed, f"missed message on {events}")
        require(m.qos == 1, f"{again.label}: missed message arrived with QoS {m.qos}")
        again.disconnect()

    # 7
    def check_will(self) -> None:
        assert self.dev and self.service
        status = self.topic("status")
        self.service.subscribe_granted([(status, 1)])
        # The device's working connection ends cleanly first (one connection per client id).
        self.dev.disconnect()
        last_words = self.payload("offline")
        vanishing = self.open(self.device, "device with a will", will=(status, last_words, 1))
        vanishing.drop()
        m = self.service.message(lambda m: m.topic == status and m.payload == last_words, f"will on {status}")
        require(m.qos == 1, f"service: will arrived with QoS {m.qos}")

    # 8
    def check_shared_subscription(self) -> str:
        assert self.service
        group = "$share/workers/things/+/telemetry"
        fence_topic = self.topic("fence")
        second = self.open(self.svc2, "second worker")
        workers = [self.service, second]
        for w in workers:
            w.subscribe_granted([(group, 1), (fence_topic, 1)])
        self.dev = self.open(self.device, "device")
        telemetry = self.topic("telemetry")
        sent = [self.payload(f"m{i}") for i in range(10)]
        for p in sent:
            self.dev.publish_ok(telemetry, p, 1)
        # Every worker has a plain subscription to the fence topic: when the
        # fence arrives, everything published before it has been delivered.
        fence = self.payload("fence-8")
        self.dev.publish_ok(fence_topic, fence, 1)
        for w in workers:
            w.message(lambda m: m.topic == fence_topic and m.payload == fence, f"fence on {fence_topic}")
        got = [
            [m.payload for m in w.take_messages(lambda m: m.topic == telemetry)]
            for w in workers
        ]
        everything = got[0] + got[1]
        require(
            len(everything) == len(sent) and sorted(everything) == sorted(sent),
            f"shared subscription delivered {len(everything)} messages, expected each of 10 once: {got}",
        )
        require(all(got), f"shared subscription gave one worker nothing: {[len(g) for g in got]}")
        self.service.unsubscribe(group)
        second.disconnect()
        return f"split {len(got[0])}/{len(got[1])}"

    # 9
    def check_keep_alive(self) -> str:
        assert self.dev
        self.dev.disconnect()
        idle = self.open(self.device, "idle device", keepalive=2)
        connected_at = idle.connected_at
        assert connected_at is not None
        # From now on the client sends nothing, not even PINGREQ.
        idle.stop_loop()
        sock = idle.client.socket()
        require(sock is not None, f"{idle.label}: no socket")
        data, ended = read_until_closed(sock, connected_at + 8.0)
        elapsed = time.monotonic() - connected_at
        idle.open = False
        require(ended is not None, f"{idle.label}: still open {elapsed:.1f} s after CONNACK with keep-alive 2 s")
        require(elapsed >= 2.0, f"{idle.label}: closed after only {elapsed:.1f} s with keep-alive 2 s")
        require(elapsed <= 6.0, f"{idle.label}: closed only after {elapsed:.1f} s with keep-alive 2 s")
        if data:
            require(self.v5, f"{idle.label}: MQTT 3.1.1 server sent {data.hex()} before closing")
            require(
                data[0] == DISCONNECT_PACKET and len(data) >= 2,
                f"{idle.label}: expected DISCONNECT or nothing before the close, got {data.hex()}",
            )
            reason = data[2] if data[1] >= 1 and len(data) >= 3 else 0
            require(
                reason == KEEP_ALIVE_TIMEOUT,
                f"{idle.label}: DISCONNECT reason {reason}, expected {KEEP_ALIVE_TIMEOUT} (Keep alive timeout)",
            )
        try:
            sock.close()
        except OSError:
            pass
        before = "DISCONNECT 141, then " if data else ""
        return f"closed after {elapsed:.1f} s: {before}{ended}"

    # 10
    def check_presence(self) -> None:
        assert self.service
        d = self.device.name
        self.service.subscribe_granted([(f"$aws/events/presence/+/{d}", 1)])
        before_ms = int(time.time() * 1000)
        dev = self.open(self.device, "device")
        after_ms = int(time.time() * 1000)
        sock = dev.client.socket()
        local_ip = ipaddress.ip_address(sock.getsockname()[0]) if sock is not None else None
        connected_topic = f"$aws/events/presence/connected/{d}"
        m = self.service.message(lambda m: m.topic == connected_topic, f"presence event on {connected_topic}")
        try:
            ev = json.loads(m.payload)
        except ValueError as e:
            raise CheckFailed(f"presence event is not JSON: {m.payload!r}") from e
        fields = [
            "clientId",
            "timestamp",
            "eventType",
            "sessionIdentifier",
            "principalIdentifier",
            "ipAddress",
            "versionNumber",
        ]
        missing = [f for f in fields if f not in ev]
        require(not missing, f"presence event lacks {missing}: {ev}")
        require(ev["clientId"] == d, f"presence clientId {ev['clientId']!r}, expected {d!r}")
        require(ev["eventType"] == "connected", f"presence eventType {ev['eventType']!r}")
        ts = ev["timestamp"]
        require(
            isinstance(ts, int) and before_ms - 60_000 <= ts <= after_ms + 60_000,
            f"presence timestamp {ts!r} is not the connect time in milliseconds ({before_ms}..{after_ms})",
        )
        for f in ("sessionIdentifier", "principalIdentifier"):
            require(isinstance(ev[f], str) and ev[f], f"presence {f} is {ev[f]!r}")
        require(isinstance(ev["versionNumber"], int), f"presence versionNumber is {ev['versionNumber']!r}")
        try:
            ip = ipaddress.ip_address(ev["ipAddress"])
        except ValueError as e:
            raise CheckFailed(f"presence ipAddress {ev['ipAddress']!r} is not an IP address") from e
        if local_ip is not None:
            require(ip == local_ip, f"presence ipAddress {ip}, but the client connected from {local_ip}")
        # A clean DISCONNECT gives the matching disconnected event.
        dev.disconnect()
        disconnected_topic = f"$aws/events/presence/disconnected/{d}"
        m = self.service.message(
            lambda m: m.topic == disconnected_topic
            and json.loads(m.payload).get("versionNumber") == ev["versionNumber"],
            f"presence event on {disconnected_topic}",
        )
        gone = json.loads(m.payload)
        require(gone.get("eventType") == "disconnected", f"presence eventType {gone.get('eventType')!r}")
        require(
            gone.get("sessionIdentifier") == ev["sessionIdentifier"],
            f"disconnected sessionIdentifier {gone.get('sessionIdentifier')!r} differs from {ev['sessionIdentifier']!r}",
        )
        require(
            gone.get("clientInitiatedDisconnect") is True
            and gone.get("disconnectReason") == "CLIENT_INITIATED_DISCONNECT",
            f"disconnected event after a clean DISCONNECT: {gone}",
        )


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", required=True)
    p.add_argument("--port", required=True, type=int)
    p.add_argument("--cafile", required=True, help="root CA that issued the gateway's certificate")
    p.add_argument("--protocol", required=True, choices=["311", "5"])
    for who, what in (
        ("device", "a device with the default policy"),
        ("service", "a service with the backend policy"),
        ("service2", "a second service with the backend policy"),
    ):
        p.add_argument(f"--{who}-cert", required=True, help=f"certificate of {what}")
        p.add_argument(f"--{who}-key", required=True, help=f"private key of {what}")
        p.add_argument(f"--{who}-id", required=True, help=f"thing name (client id) of {what}")
    p.add_argument("--other-id", default="D2", help="another thing the device may not reach")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    faulthandler.dump_traceback_later(WATCHDOG, exit=True)
    checks = Checks(args)
    protocol = "MQTT 5" if checks.v5 else "MQTT 3.1.1"
    try:
        checks.run()
    except CheckFailed as e:
        print(f"FAIL {checks.current} [{protocol}]: {e}", file=sys.stderr, flush=True)
        return 1
    except Exception:
        print(f"FAIL {checks.current} [{protocol}]: unexpected error", file=sys.stderr)
        traceback.print_exc()
        sys.stderr.flush()
        return 1
    finally:
        checks.cleanup()
        faulthandler.cancel_dump_traceback_later()
    print(f"all {checks.passed} checks passed over {protocol}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
