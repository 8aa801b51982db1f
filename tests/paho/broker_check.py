#!/usr/bin/env python3
"""MQTT 5 and QoS 2 checks of the Onramp broker, one feature per run.

    broker_check.py --check NAME --host H --port P --cafile root.pem \
        --a-cert .. --a-key .. --a-id c1 --b-cert .. --b-key .. --b-id c2

The two identities (a, b) may publish, subscribe, receive and retain on
``things/...``. Most checks drive paho-mqtt 2.x; those that must see the
wire itself (packet ids, DUP, PUBREL, topic aliases, withheld
acknowledgements) use a small raw MQTT 5 client over the same mutual TLS.

A passed check prints ``ok NAME``; a failure prints ``FAIL ...`` on stderr
and exits with status 1. Every wait has a timeout.
"""

from __future__ import annotations

import argparse
import faulthandler
import secrets
import socket
import ssl
import struct
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
from paho.mqtt.subscribeoptions import SubscribeOptions

TIMEOUT = 10.0
WATCHDOG = 120


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


# ---------------------------------------------------------------- paho client


class Client:
    """A paho MQTT 5 (or 3.1.1) connection whose callbacks become awaitable events."""

    def __init__(self, args: argparse.Namespace, ident: Identity, v5: bool = True) -> None:
        self.args = args
        self.ident = ident
        self.v5 = v5
        self._cond = threading.Condition()
        self.events: list[tuple[str, Any]] = []
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=ident.name,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            reconnect_on_failure=False,
            **({} if v5 else {"clean_session": True}),
        )
        self.client.tls_set(ca_certs=args.cafile, certfile=ident.cert, keyfile=ident.key)
        self.client.on_connect = lambda _c, _u, f, rc, p: self._push("connect", (f.session_present, rc, p))
        self.client.on_subscribe = lambda _c, _u, mid, rcs, _p: self._push("subscribe", (mid, [r.value for r in rcs]))
        self.client.on_publish = lambda _c, _u, mid, rc, _p: self._push("publish", (mid, rc.value))
        self.client.on_message = lambda _c, _u, m: self._push("message", m)
        self.client.on_disconnect = lambda _c, _u, f, rc, p: self._push("disconnect", (rc, p))

    def _push(self, kind: str, data: Any) -> None:
        with self._cond:
            self.events.append((kind, data))
            self._cond.notify_all()

    def wait_for(self, kind: str, match: Callable[[Any], bool] = lambda _d: True,
                 what: str = "", timeout: float = TIMEOUT) -> Any:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i, (k, d) in enumerate(self.events):
                    if k == kind and match(d):
                        del self.events[i]
                        return d
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CheckFailed(f"{self.ident.name}: no {what or kind} within {timeout:.0f} s")
                self._cond.wait(left)

    def messages(self) -> list[Any]:
        with self._cond:
            return [d for k, d in self.events if k == "message"]

    def connect(self, clean: bool = True, props: Properties | None = None, keepalive: int = 30,
                expect_ok: bool = True) -> tuple[bool, Any, Any]:
        kwargs: dict[str, Any] = {}
        if self.v5:
            kwargs["clean_start"] = clean
            if props is not None:
                kwargs["properties"] = props
        self.client.connect(self.args.host, self.args.port, keepalive=keepalive, **kwargs)
        self.client.loop_start()
        present, rc, p = self.wait_for("connect", what="CONNACK")
        if expect_ok:
            require(rc.value == 0, f"{self.ident.name}: CONNECT refused: {rc}")
        return bool(present), rc, p

    def subscribe(self, topic: str, options: Any, props: Properties | None = None) -> list[int]:
        result, mid = self.client.subscribe([(topic, options)], properties=props)
        require(result == mqtt.MQTT_ERR_SUCCESS, f"SUBSCRIBE not sent: {result}")
        return self.wait_for("subscribe", lambda d: d[0] == mid, "SUBACK")[1]

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool = False,
                props: Properties | None = None) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        if qos > 0:
            mid, rc = self.wait_for("publish", lambda d: d[0] == info.mid, f"acknowledgement of {topic}")
            require(rc == 0, f"publish {topic} refused: {rc}")
        else:
            info.wait_for_publish(TIMEOUT)

    def message(self, match: Callable[[Any], bool] = lambda _m: True, what: str = "message",
                timeout: float = TIMEOUT) -> Any:
        return self.wait_for("message", match, what, timeout)

    def none_for(self, seconds: float, match: Callable[[Any], bool] = lambda _m: True) -> None:
        time.sleep(seconds)
        got = [m for m in self.messages() if match(m)]
        require(not got, f"{self.ident.name}: unexpected messages {[(m.topic, m.payload) for m in got]}")

    def disconnect(self, props: Properties | None = None) -> None:
        self.client.disconnect(properties=props)
        self.wait_for("disconnect", what="end of DISCONNECT")
        self.client.loop_stop()

    def drop(self) -> None:
        """Loses the connection without DISCONNECT (the will is due)."""
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            finally:
                sock.close()


def connect_props(**values: Any) -> Properties:
    p = Properties(PacketTypes.CONNECT)
    for k, v in values.items():
        setattr(p, k, v)
    return p


# ------------------------------------------------------------ raw MQTT 5 client


def varint(n: int) -> bytes:
    out = b""
    while True:
        b = n % 128
        n //= 128
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out


def utf8(s: str) -> bytes:
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def prop_u16(pid: int, v: int) -> bytes:
    return bytes([pid]) + struct.pack("!H", v)


def prop_u32(pid: int, v: int) -> bytes:
    return bytes([pid]) + struct.pack("!I", v)


CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK, DISCONNECT = 2, 3, 4, 5, 6, 7, 9, 14


def parse_props(data: bytes) -> dict[int, Any]:
    """MQTT 5 properties by identifier; repeated ones (user properties,
    subscription identifiers) as lists."""
    props: dict[int, Any] = {}
    i = 0

    def rd_varint() -> int:
        nonlocal i
        n, shift = 0, 0
        while True:
            b = data[i]
            i += 1
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return n

    def rd_bin() -> bytes:
        nonlocal i
        ln = struct.unpack("!H", data[i:i + 2])[0]
        v = data[i + 2:i + 2 + ln]
        i += 2 + ln
        return v

    while i < len(data):
        pid = rd_varint()
        if pid in (0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A):
            v: Any = data[i]
            i += 1
        elif pid in (0x13, 0x21, 0x22, 0x23):
            v = struct.unpack("!H", data[i:i + 2])[0]
            i += 2
        elif pid in (0x02, 0x11, 0x18, 0x27):
            v = struct.unpack("!I", data[i:i + 4])[0]
            i += 4
        elif pid == 0x0B:
            v = rd_varint()
        elif pid == 0x26:
            v = (rd_bin().decode(), rd_bin().decode())
        elif pid in (0x09, 0x16):
            v = rd_bin()
        else:
            v = rd_bin().decode()
        if pid in (0x26, 0x0B):
            props.setdefault(pid, []).append(v)
        else:
            props[pid] = v
    return props


@dataclass
class Packet:
    kind: int
    flags: int
    body: bytes

    def packet_id(self) -> int:
        return struct.unpack("!H", self.body[:2])[0]

    def reason(self) -> int:
        return self.body[2] if len(self.body) > 2 else 0


@dataclass
class Pub:
    topic: str
    payload: bytes
    qos: int
    dup: bool
    retain: bool
    packet_id: int | None
    props: dict[int, Any]


class Raw:
    """A bare MQTT 5 client: sends exactly what a check says, acknowledges nothing by itself."""

    def __init__(self, args: argparse.Namespace, ident: Identity) -> None:
        ctx = ssl.create_default_context(cafile=args.cafile)
        ctx.load_cert_chain(ident.cert, ident.key)
        tcp = socket.create_connection((args.host, args.port), timeout=TIMEOUT)
        self.sock = ctx.wrap_socket(tcp, server_hostname=args.host)
        self.ident = ident
        self.buf = b""

    def send(self, kind_flags: int, body: bytes) -> None:
        self.sock.sendall(bytes([kind_flags]) + varint(len(body)) + body)

    def read(self, timeout: float = TIMEOUT) -> Packet | None:
        """The next packet, or None when none comes within `timeout`.
        Raises CheckFailed if the server closes the connection."""
        deadline = time.monotonic() + timeout
        while True:
            pkt = self._take()
            if pkt:
                return pkt
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except (socket.timeout, ssl.SSLWantReadError):
                return None
            except (ssl.SSLError, OSError) as e:
                raise CheckFailed(f"{self.ident.name}: connection closed ({e!r})") from e
            if not chunk:
                raise CheckFailed(f"{self.ident.name}: connection closed")
            self.buf += chunk

    def _take(self) -> Packet | None:
        if len(self.buf) < 2:
            return None
        n, shift, i = 0, 0, 1
        while True:
            if i >= len(self.buf):
                return None
            b = self.buf[i]
            i += 1
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        if len(self.buf) < i + n:
            return None
        first = self.buf[0]
        body = self.buf[i:i + n]
        self.buf = self.buf[i + n:]
        return Packet(first >> 4, first & 0x0F, body)

    def expect(self, kind: int, what: str, timeout: float = TIMEOUT) -> Packet:
        p = self.read(timeout)
        require(p is not None, f"{self.ident.name}: no {what} within {timeout:.0f} s")
        assert p is not None
        require(p.kind == kind, f"{self.ident.name}: expected {what}, got packet type {p.kind} {p.body!r}")
        return p

    def connect(self, clean: bool = True, props: bytes = b"", keepalive: int = 60) -> tuple[bool, int, dict[int, Any]]:
        vh = utf8("MQTT") + bytes([5, 0x02 if clean else 0]) + struct.pack("!H", keepalive)
        vh += varint(len(props)) + props
        self.send(0x10, vh + utf8(self.ident.name))
        p = self.expect(CONNACK, "CONNACK")
        ln_end = 2
        plen, shift, i = 0, 0, 2
        while True:
            b = p.body[i]
            i += 1
            plen |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        del ln_end
        return bool(p.body[0] & 1), p.body[1], parse_props(p.body[i:i + plen])

    def subscribe(self, packet_id: int, topic: str, options: int, props: bytes = b"") -> list[int]:
        self.send(0x82, struct.pack("!H", packet_id) + varint(len(props)) + props + utf8(topic) + bytes([options]))
        p = self.expect(SUBACK, "SUBACK")
        plen = p.body[2]
        return list(p.body[3 + plen:])

    def publish(self, topic: str, payload: bytes, qos: int, packet_id: int | None = None,
                dup: bool = False, props: bytes = b"") -> None:
        flags = (qos << 1) | (0x08 if dup else 0)
        body = utf8(topic) + (struct.pack("!H", packet_id) if qos else b"")
        body += varint(len(props)) + props + payload
        self.send(0x30 | flags, body)

    def ack(self, kind: int, packet_id: int) -> None:
        self.send((kind << 4) | (0x02 if kind == PUBREL else 0), struct.pack("!H", packet_id))

    def pub(self, what: str, timeout: float = TIMEOUT) -> Pub:
        p = self.expect(PUBLISH, what, timeout)
        return self.parse(p)

    @staticmethod
    def parse(p: Packet) -> Pub:
        b = p.body
        ln = struct.unpack("!H", b[:2])[0]
        topic = b[2:2 + ln].decode()
        i = 2 + ln
        qos = (p.flags >> 1) & 3
        pid = None
        if qos:
            pid = struct.unpack("!H", b[i:i + 2])[0]
            i += 2
        plen, shift = 0, 0
        while True:
            c = b[i]
            i += 1
            plen |= (c & 0x7F) << shift
            shift += 7
            if not c & 0x80:
                break
        props = parse_props(b[i:i + plen])
        return Pub(topic, b[i + plen:], qos, bool(p.flags & 8), bool(p.flags & 1), pid, props)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


# ------------------------------------------------------------------- checks


class Checks:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.a = Identity(args.a_id, args.a_cert, args.a_key)
        self.b = Identity(args.b_id, args.b_cert, args.b_key)
        self.base = f"things/{self.a.name}/t{secrets.token_hex(3)}"

    def client(self, ident: Identity, v5: bool = True) -> Client:
        return Client(self.args, ident, v5)

    def raw(self, ident: Identity) -> Raw:
        return Raw(self.args, ident)

    # Message properties reach MQTT 5 subscribers unchanged; an MQTT 3.1.1
    # subscriber gets the message without them.
    def properties(self) -> None:
        topic = f"{self.base}/props"
        sub = self.client(self.b)
        sub.connect()
        sub.subscribe(topic, SubscribeOptions(qos=1))
        pub = self.client(self.a)
        pub.connect()
        p = Properties(PacketTypes.PUBLISH)
        p.UserProperty = [("site", "north"), ("site", "south"), ("unit", "°C")]
        p.ResponseTopic = f"{self.base}/reply"
        p.CorrelationData = b"\x00\x01req-42"
        p.ContentType = "application/json"
        p.PayloadFormatIndicator = 1
        p.MessageExpiryInterval = 120
        pub.publish(topic, b'{"t": 21.5}', 1, props=p)
        m = sub.message(what="the message with properties")
        got = m.properties
        require(getattr(got, "UserProperty", None) == [("site", "north"), ("site", "south"), ("unit", "°C")],
                f"user properties: {getattr(got, 'UserProperty', None)}")
        require(getattr(got, "ResponseTopic", None) == f"{self.base}/reply", "response topic")
        require(getattr(got, "CorrelationData", None) == b"\x00\x01req-42", "correlation data")
        require(getattr(got, "ContentType", None) == "application/json", "content type")
        require(getattr(got, "PayloadFormatIndicator", None) == 1, "payload format indicator")
        left = getattr(got, "MessageExpiryInterval", None)
        require(left is not None and 1 <= left <= 120, f"message expiry interval {left}")
        sub.disconnect()
        v3 = self.client(self.b, v5=False)
        v3.connect()
        v3.subscribe(topic, 1)
        pub.publish(topic, b"to 3.1.1", 1, props=p)
        m = v3.message(what="the message over MQTT 3.1.1")
        require(m.payload == b"to 3.1.1", f"payload {m.payload!r}")
        v3.disconnect()
        pub.disconnect()

    # A Will carries its properties too, and its delay is honoured.
    def will_properties(self) -> None:
        topic = f"{self.base}/will-props"
        sub = self.client(self.b)
        sub.connect()
        sub.subscribe(topic, SubscribeOptions(qos=1))
        dying = self.client(self.a)
        wp = Properties(PacketTypes.WILLMESSAGE)
        wp.UserProperty = [("reason", "power")]
        wp.ContentType = "text/plain"
        wp.ResponseTopic = f"{self.base}/ack"
        wp.CorrelationData = b"w1"
        dying.client.will_set(topic, b"gone", qos=1, properties=wp)
        dying.connect()
        dying.drop()
        m = sub.message(what="the will")
        got = m.properties
        require(getattr(got, "UserProperty", None) == [("reason", "power")], "will user properties")
        require(getattr(got, "ContentType", None) == "text/plain", "will content type")
        require(getattr(got, "CorrelationData", None) == b"w1", "will correlation data")
        sub.disconnect()

    # No Local: a subscription does not get its own session's messages.
    def no_local(self) -> None:
        topic = f"{self.base}/nolocal"
        a = self.client(self.a)
        a.connect()
        a.subscribe(topic, SubscribeOptions(qos=1, noLocal=True))
        b = self.client(self.b)
        b.connect()
        b.subscribe(topic, SubscribeOptions(qos=1, noLocal=True))
        a.publish(topic, b"from a", 1)
        b.message(what="a's message at b")
        a.none_for(1.0)
        b.publish(topic, b"from b", 1)
        a.message(lambda m: m.payload == b"from b", "b's message at a")
        b.none_for(1.0, lambda m: m.payload == b"from b")
        a.disconnect()
        b.disconnect()

    # Retain As Published keeps the publisher's RETAIN flag; without it a
    # live delivery has RETAIN cleared.
    def retain_as_published(self) -> None:
        topic = f"{self.base}/rap"
        a = self.client(self.a)
        a.connect()
        a.subscribe(topic, SubscribeOptions(qos=1, retainAsPublished=True))
        b = self.client(self.b)
        b.connect()
        b.subscribe(topic, SubscribeOptions(qos=1))
        b.publish(topic, b"plain", 1)
        b.publish(topic, b"kept", 1, retain=True)
        m1 = a.message(lambda m: m.payload == b"plain", "plain")
        m2 = a.message(lambda m: m.payload == b"kept", "kept")
        require(not m1.retain and m2.retain, f"RAP flags {m1.retain} {m2.retain}")
        m3 = b.message(lambda m: m.payload == b"kept", "kept at b")
        require(not m3.retain, "RETAIN must be cleared without Retain As Published")
        b.publish(topic, b"", 1, retain=True)
        a.disconnect()
        b.disconnect()

    # Retain Handling 0 sends retained messages at every SUBSCRIBE, 1 only
    # for a new subscription, 2 never.
    def retain_handling(self) -> None:
        topic = f"{self.base}/rh"
        b = self.client(self.b)
        b.connect()
        b.publish(topic, b"retained", 1, retain=True)
        a = self.client(self.a)
        a.connect()
        is_r = lambda m: m.payload == b"retained"
        a.subscribe(topic, SubscribeOptions(qos=1, retainHandling=1))
        require(a.message(is_r, "retained (handling 1, new)").retain, "retained flag")
        a.subscribe(topic, SubscribeOptions(qos=1, retainHandling=1))
        a.none_for(1.0, is_r)
        a.subscribe(topic, SubscribeOptions(qos=1, retainHandling=0))
        a.message(is_r, "retained (handling 0, existing)")
        a.disconnect()
        a = self.client(self.a)
        a.connect()
        a.subscribe(topic, SubscribeOptions(qos=1, retainHandling=2))
        a.none_for(1.0, is_r)
        a.disconnect()
        b.publish(topic, b"", 1, retain=True)
        b.disconnect()

    # Message Expiry: a queued message past its interval is never delivered;
    # one still valid arrives with what remains of its interval; a retained
    # message expires too.
    def message_expiry(self) -> None:
        topic = f"{self.base}/expiry"
        b = self.client(self.b)
        b.connect(props=connect_props(SessionExpiryInterval=300))
        b.subscribe(topic, SubscribeOptions(qos=1))
        b.disconnect()
        a = self.client(self.a)
        a.connect()
        for payload, secs, qos in ((b"short-1", 1, 1), (b"short-2", 1, 2), (b"long-1", 30, 1), (b"long-2", 30, 2)):
            p = Properties(PacketTypes.PUBLISH)
            p.MessageExpiryInterval = secs
            a.publish(topic, payload, qos, props=p)
        p = Properties(PacketTypes.PUBLISH)
        p.MessageExpiryInterval = 1
        a.publish(f"{topic}/retained", b"short retained", 1, retain=True, props=p)
        time.sleep(2.5)
        b = self.client(self.b)
        present, _, _ = b.connect(clean=False, props=connect_props(SessionExpiryInterval=300))
        require(present, "the persistent session is gone")
        got = [b.message(what="a queued message that has not expired") for _ in range(2)]
        require(sorted(m.payload for m in got) == [b"long-1", b"long-2"], f"got {[m.payload for m in got]}")
        for m in got:
            left = getattr(m.properties, "MessageExpiryInterval", None)
            require(left is not None and left <= 28, f"remaining expiry {left} (sent 30, 2.5 s ago)")
        b.none_for(1.0, lambda m: m.payload.startswith(b"short"))
        b.subscribe(f"{topic}/retained", SubscribeOptions(qos=1))
        b.none_for(1.0, lambda m: m.payload == b"short retained")
        b.disconnect(props=_disconnect_expiry(0))
        a.disconnect()

    # Will Delay: the will waits for its delay, is cancelled by a reconnect
    # in time, and goes out when the session ends first.
    def will_delay(self) -> None:
        topic = f"{self.base}/will"
        w = self.client(self.b)
        w.connect()
        w.subscribe(topic, SubscribeOptions(qos=1))

        def dying(delay: int, expiry: int, payload: bytes) -> Client:
            c = self.client(self.a)
            wp = Properties(PacketTypes.WILLMESSAGE)
            wp.WillDelayInterval = delay
            c.client.will_set(topic, payload, qos=1, properties=wp)
            c.connect(props=connect_props(SessionExpiryInterval=expiry))
            return c

        c = dying(2, 30, b"delayed")
        start = time.monotonic()
        c.drop()
        w.message(lambda m: m.payload == b"delayed", "the delayed will", timeout=6)
        took = time.monotonic() - start
        require(1.5 <= took <= 3.5, f"the will came after {took:.1f} s, its delay is 2 s")

        c = dying(3, 30, b"cancelled")
        c.drop()
        time.sleep(1.0)
        back = self.client(self.a)
        present, _, _ = back.connect(clean=False, props=connect_props(SessionExpiryInterval=30))
        require(present, "session not resumed")
        w.none_for(4.0, lambda m: m.payload == b"cancelled")
        back.disconnect(props=_disconnect_expiry(0))

        c = dying(30, 1, b"session end")
        start = time.monotonic()
        c.drop()
        w.message(lambda m: m.payload == b"session end", "the will at session end", timeout=6)
        took = time.monotonic() - start
        require(took <= 2.5, f"the will came after {took:.1f} s, the session ends after 1 s")
        w.disconnect()

    # Session Expiry is checked when the client comes back, not only by a
    # periodic sweep; DISCONNECT may change it.
    def session_expiry(self) -> None:
        c = self.client(self.a)
        c.connect(props=connect_props(SessionExpiryInterval=2))
        c.subscribe(f"{self.base}/se", SubscribeOptions(qos=1))
        c.disconnect()
        time.sleep(1.0)
        c = self.client(self.a)
        present, _, _ = c.connect(clean=False, props=connect_props(SessionExpiryInterval=2))
        require(present, "session gone after 1 s of 2")
        c.disconnect()
        time.sleep(2.3)
        c = self.client(self.a)
        present, _, _ = c.connect(clean=False, props=connect_props(SessionExpiryInterval=2))
        require(not present, "session resumed 2.3 s after it expired at 2 s")
        c.disconnect(props=_disconnect_expiry(5))
        time.sleep(3.0)
        c = self.client(self.a)
        present, _, _ = c.connect(clean=False, props=connect_props(SessionExpiryInterval=2))
        require(present, "DISCONNECT's Session Expiry Interval (5 s) was not applied")
        c.disconnect(props=_disconnect_expiry(0))
        c = self.client(self.a)
        present, _, _ = c.connect(clean=False)
        require(not present, "DISCONNECT with Session Expiry 0 must end the session")
        c.disconnect()

    # QoS 2 end to end, and overlapping subscriptions delivered once at the
    # highest QoS granted.
    def qos2(self) -> None:
        topic = f"{self.base}/q2/x"
        sub = self.client(self.b)
        present, _, props = sub.connect()
        require(getattr(props, "MaximumQoS", 2) == 2, "CONNACK must not limit QoS")
        require(sub.subscribe(topic, SubscribeOptions(qos=2)) == [2], "QoS 2 not granted")
        require(sub.subscribe(f"{self.base}/q2/+", SubscribeOptions(qos=0)) == [0], "QoS 0 not granted")
        pub = self.client(self.a)
        pub.connect()
        pub.publish(topic, b"exactly once", 2)
        m = sub.message(what="the QoS 2 message")
        require(m.qos == 2, f"delivered at QoS {m.qos}, the highest matching subscription is 2")
        sub.none_for(1.0)
        pub.publish(topic, b"at one", 1)
        m = sub.message(what="the QoS 1 message")
        require(m.qos == 1, f"QoS 1 message delivered at {m.qos}")
        sub.disconnect()
        pub.disconnect()

    # QoS 2 exactly once across reconnects of persistent sessions, both ways.
    def qos2_reconnect(self) -> None:
        topic = f"{self.base}/q2r"
        expiry = prop_u32(0x11, 300)
        # Towards the client: dropped before PUBREC, the PUBLISH is resent
        # with DUP and the same id; dropped after PUBREL, only PUBREL is.
        r = self.raw(self.b)
        r.connect(props=expiry)
        require(r.subscribe(1, topic, 2) == [2], "QoS 2 not granted")
        pub = self.client(self.a)
        pub.connect()
        pub.publish(topic, b"m1", 2)
        first = r.pub("the first delivery")
        require(first.qos == 2 and not first.dup, "first delivery")
        r.close()
        r = self.raw(self.b)
        present, _, _ = r.connect(clean=False, props=expiry)
        require(present, "session not resumed")
        again = r.pub("the redelivery")
        require(again.dup and again.packet_id == first.packet_id and again.payload == b"m1",
                f"redelivery dup={again.dup} id={again.packet_id} (was {first.packet_id})")
        r.ack(PUBREC, again.packet_id or 0)
        rel = r.expect(PUBREL, "PUBREL")
        require(rel.packet_id() == first.packet_id, "PUBREL id")
        r.close()
        r = self.raw(self.b)
        r.connect(clean=False, props=expiry)
        rel = r.expect(PUBREL, "the PUBREL resent after reconnect")
        require(rel.packet_id() == first.packet_id, "resent PUBREL id")
        r.ack(PUBCOMP, rel.packet_id())
        extra = r.read(1.5)
        require(extra is None, f"after PUBCOMP nothing more was expected, got type {extra and extra.kind}")
        r.close()
        # From the client: a PUBLISH resent (DUP) after a reconnect but
        # before PUBREL is routed once.
        watch = self.client(self.b)
        watch.connect()
        watch.subscribe(f"{topic}/in", SubscribeOptions(qos=2))
        s = self.raw(self.a)
        s.connect(props=expiry)
        s.publish(f"{topic}/in", b"once", 2, packet_id=7)
        rec = s.expect(PUBREC, "PUBREC")
        require(rec.packet_id() == 7 and rec.reason() == 0, "PUBREC")
        s.close()
        s = self.raw(self.a)
        present, _, _ = s.connect(clean=False, props=expiry)
        require(present, "publisher session not resumed")
        s.publish(f"{topic}/in", b"once", 2, packet_id=7, dup=True)
        rec = s.expect(PUBREC, "PUBREC for the duplicate")
        require(rec.packet_id() == 7, "PUBREC id")
        s.ack(PUBREL, 7)
        comp = s.expect(PUBCOMP, "PUBCOMP")
        require(comp.packet_id() == 7 and comp.reason() == 0, "PUBCOMP")
        s.ack(PUBREL, 7)
        comp = s.expect(PUBCOMP, "PUBCOMP for an unknown id")
        require(comp.reason() == 0x92, f"PUBCOMP reason {comp.reason():#x}, expected 0x92")
        watch.message(lambda m: m.payload == b"once", "the message")
        watch.none_for(1.5, lambda m: m.payload == b"once")
        s.send(0xE0, b"\x00\x05" + prop_u32(0x11, 0))
        s.close()
        watch.disconnect()
        pub.disconnect()

    # The client's Maximum Packet Size: a larger message is not sent to it,
    # and later messages still flow.
    def max_packet_size(self) -> None:
        topic = f"{self.base}/mps"
        sub = self.client(self.b)
        sub.connect(props=connect_props(MaximumPacketSize=128))
        sub.subscribe(topic, SubscribeOptions(qos=1))
        pub = self.client(self.a)
        pub.connect()
        pub.publish(topic, b"small-1", 1)
        pub.publish(topic, b"x" * 200, 1)
        pub.publish(topic, b"small-2", 1)
        sub.message(lambda m: m.payload == b"small-1", "small-1")
        sub.message(lambda m: m.payload == b"small-2", "small-2 (after the dropped one)")
        sub.none_for(0.5, lambda m: len(m.payload) == 200)
        sub.disconnect()
        pub.disconnect()

    # Receive Maximum, both ways: Onramp keeps to the client's, and a
    # client that exceeds Onramp's gets DISCONNECT 0x93.
    def receive_maximum(self) -> None:
        topic = f"{self.base}/rm"
        r = self.raw(self.b)
        r.connect(props=prop_u16(0x21, 2))
        r.subscribe(1, topic, 1)
        pub = self.client(self.a)
        pub.connect()
        for i in range(3):
            pub.publish(topic, f"m{i}".encode(), 1)
        p1 = r.pub("the first message")
        r.pub("the second message")
        extra = r.read(1.5)
        require(extra is None, "a third message beyond the client's Receive Maximum of 2")
        r.ack(PUBACK, p1.packet_id or 0)
        p3 = r.pub("the third message after a PUBACK")
        require(p3.payload == b"m2", f"third payload {p3.payload!r}")
        r.close()
        pub.disconnect()
        s = self.raw(self.a)
        _, _, props = s.connect()
        quota = props.get(0x21, 65535)
        require(quota < 65535, f"CONNACK Receive Maximum {quota}")
        for i in range(quota + 1):
            s.publish(f"{topic}/in", b"x", 2, packet_id=i + 1)
        while True:
            p = s.read()
            require(p is not None, "no DISCONNECT")
            assert p is not None
            if p.kind == DISCONNECT:
                require(p.body[0] == 0x93, f"DISCONNECT reason {p.body[0]:#x}, expected 0x93")
                props = parse_props(p.body[2:])
                require(0x1F in props, "DISCONNECT without a reason string")
                break
            require(p.kind == PUBREC, f"unexpected packet type {p.kind}")
        s.close()

    # Topic aliases: Onramp assigns them towards a client that takes them,
    # and resolves those a client sets; a bad alias gets DISCONNECT 0x94.
    def topic_aliases(self) -> None:
        topic = f"{self.base}/alias"
        r = self.raw(self.b)
        _, _, props = r.connect(props=prop_u16(0x22, 4))
        inbound_max = props.get(0x22, 0)
        require(inbound_max > 0, "CONNACK offers no Topic Alias Maximum")
        r.subscribe(1, topic, 0)
        pub = self.raw(self.a)
        pub.connect()
        pub.publish(topic, b"one", 0, props=prop_u16(0x23, 1))
        pub.publish("", b"two", 0, props=prop_u16(0x23, 1))
        pub.publish("", b"three", 0, props=prop_u16(0x23, 1))
        got = [r.pub(f"message {i}") for i in range(3)]
        require([g.payload for g in got] == [b"one", b"two", b"three"], f"{[g.payload for g in got]}")
        alias = got[0].props.get(0x23)
        require(alias is not None and 1 <= alias <= 4 and got[0].topic == topic,
                f"first: topic {got[0].topic!r} alias {alias}")
        for g in got[1:]:
            require(g.topic == "" and g.props.get(0x23) == alias, f"later: topic {g.topic!r} alias {g.props.get(0x23)}")
        pub.publish("", b"bad", 0, props=prop_u16(0x23, 3))
        d = pub.expect(DISCONNECT, "DISCONNECT for an unknown alias")
        require(d.body[0] == 0x94, f"reason {d.body[0]:#x}, expected 0x94")
        pub.close()
        r.close()

    # Subscription Identifiers: each matching subscription's id is delivered.
    def subscription_ids(self) -> None:
        topic = f"{self.base}/sid/x"
        sub = self.client(self.b)
        _, _, props = sub.connect()
        require(getattr(props, "SubscriptionIdentifierAvailable", 1) == 1, "CONNACK says not available")
        sp = Properties(PacketTypes.SUBSCRIBE)
        sp.SubscriptionIdentifier = 2
        sub.subscribe(topic, SubscribeOptions(qos=1), sp)
        sp = Properties(PacketTypes.SUBSCRIBE)
        sp.SubscriptionIdentifier = 268435455
        sub.subscribe(f"{self.base}/sid/#", SubscribeOptions(qos=1), sp)
        pub = self.client(self.a)
        pub.connect()
        pub.publish(topic, b"ids", 1)
        m = sub.message(what="the message")
        ids = getattr(m.properties, "SubscriptionIdentifier", [])
        require(sorted(ids) == [2, 268435455], f"subscription identifiers {ids}")
        sub.disconnect()
        pub.disconnect()

    # Server Keep Alive, Response Information, reason strings, enhanced
    # authentication refused with CONNACK 0x8C.
    def connect_properties(self) -> None:
        c = self.client(self.a)
        _, _, props = c.connect(keepalive=3600, props=connect_props(RequestResponseInformation=1))
        keep = getattr(props, "ServerKeepAlive", None)
        require(keep == self.args.max_keep_alive, f"Server Keep Alive {keep}, expected {self.args.max_keep_alive}")
        info = getattr(props, "ResponseInformation", None)
        require(isinstance(info, str) and info.startswith(f"things/{self.a.name}/"), f"Response Information {info!r}")
        c.disconnect()
        c = self.client(self.a)
        _, rc, _ = c.connect(props=connect_props(AuthenticationMethod="SCRAM-SHA-256"), expect_ok=False)
        require(rc.value == 0x8C, f"CONNACK {rc.value:#x} for enhanced authentication, expected 0x8C")
        c.client.loop_stop()

    # AWS strict: QoS 2 refused as AWS IoT does.
    def aws_strict(self) -> None:
        c = self.client(self.a)
        _, _, props = c.connect()
        require(getattr(props, "MaximumQoS", None) == 1, "CONNACK Maximum QoS must be 1")
        require(c.subscribe(f"{self.base}/strict", SubscribeOptions(qos=2)) == [1], "QoS 2 granted as 1")
        c.disconnect()
        r = self.raw(self.a)
        r.connect()
        r.publish(f"{self.base}/strict", b"x", 2, packet_id=1)
        d = r.expect(DISCONNECT, "DISCONNECT for QoS 2")
        require(d.body[0] == 0x9B, f"reason {d.body[0]:#x}, expected 0x9B")
        r.close()

    # ---- persistent sessions across a server restart (two phases each;
    # the test kills the server with SIGKILL between them and starts it
    # again on the same store).

    def _restart_topic(self) -> str:
        return f"things/{self.a.name}/restart"

    def restart_before(self) -> None:
        topic = self._restart_topic()
        expiry = prop_u32(0x11, 3600)
        sub = self.raw(self.b)
        sub.connect(props=expiry)
        require(sub.subscribe(1, f"{topic}/#", 2) == [2], "QoS 2 not granted")
        pub = self.raw(self.a)
        pub.connect(props=expiry)
        # Delivered before the kill up to PUBREL: after the restart only
        # PUBREL is sent again, never this PUBLISH.
        pub.publish(f"{topic}/x", b"r0", 2, packet_id=1)
        require(pub.expect(PUBREC, "PUBREC").reason() == 0, "PUBREC refused")
        pub.ack(PUBREL, 1)
        pub.expect(PUBCOMP, "PUBCOMP")
        first = sub.pub("r0")
        require(first.qos == 2 and first.payload == b"r0", f"r0 delivered as {first}")
        sub.ack(PUBREC, first.packet_id or 0)
        rel = sub.expect(PUBREL, "PUBREL of r0")
        require(rel.packet_id() == first.packet_id, "PUBREL id")
        sub.close()
        # Published while the subscriber is away; each acknowledged.
        for i in range(1, 6):
            pub.publish(f"{topic}/x", f"q1-{i}".encode(), 1, packet_id=10 + i)
            ack = pub.expect(PUBACK, f"PUBACK of q1-{i}")
            require(ack.packet_id() == 10 + i, "PUBACK id")
        for i in range(1, 6):
            pub.publish(f"{topic}/x", f"q2-{i}".encode(), 2, packet_id=20 + i)
            require(pub.expect(PUBREC, f"PUBREC of q2-{i}").packet_id() == 20 + i, "PUBREC id")
            pub.ack(PUBREL, 20 + i)
            require(pub.expect(PUBCOMP, f"PUBCOMP of q2-{i}").reason() == 0, "PUBCOMP")
        # PUBREC received, PUBREL not sent yet when the server dies.
        pub.publish(f"{topic}/x", b"q2-pending", 2, packet_id=99)
        require(pub.expect(PUBREC, "PUBREC of q2-pending").packet_id() == 99, "PUBREC id")
        pub.close()

    def restart_after(self) -> None:
        topic = self._restart_topic()
        expiry = prop_u32(0x11, 3600)
        pub = self.raw(self.a)
        present, _, _ = pub.connect(clean=False, props=expiry)
        require(present, "the publisher's session was not resumed after the restart")
        # The publisher resends its unreleased QoS 2 PUBLISH, then PUBREL.
        pub.publish(f"{topic}/x", b"q2-pending", 2, packet_id=99, dup=True)
        rec = pub.expect(PUBREC, "PUBREC of the resent q2-pending")
        require(rec.packet_id() == 99 and rec.reason() == 0, f"PUBREC {rec}")
        pub.ack(PUBREL, 99)
        comp = pub.expect(PUBCOMP, "PUBCOMP of q2-pending")
        require(comp.reason() == 0, f"PUBCOMP reason {comp.reason():#x}: the packet id was forgotten")
        sub = self.raw(self.b)
        present, _, _ = sub.connect(clean=False, props=expiry)
        require(present, "the subscriber's session was not resumed after the restart")
        got: list[bytes] = []
        releases = 0
        while True:
            p = sub.read(3.0)
            if p is None:
                break
            if p.kind == PUBREL:
                releases += 1
                sub.ack(PUBCOMP, p.packet_id())
            elif p.kind == PUBLISH:
                m = Raw.parse(p)
                got.append(m.payload)
                if m.qos == 1:
                    sub.ack(PUBACK, m.packet_id or 0)
                elif m.qos == 2:
                    sub.ack(PUBREC, m.packet_id or 0)
            else:
                raise CheckFailed(f"unexpected packet type {p.kind}")
        expected = [f"q1-{i}".encode() for i in range(1, 6)]
        expected += [f"q2-{i}".encode() for i in range(1, 6)] + [b"q2-pending"]
        require(got == expected, f"after the restart the subscriber got {got}, expected each of {expected} once")
        # r0's PUBREL again, and one for each QoS 2 message now.
        require(releases == 1 + 6, f"{releases} PUBRELs, expected 7 (r0's again and six new)")
        for c in (sub, pub):
            c.send(0xE0, b"\x00\x05" + prop_u32(0x11, 0))
            c.close()

    def expired_before(self) -> None:
        base = f"things/{self.a.name}/expired"
        w = self.raw(self.b)
        w.connect(props=prop_u32(0x11, 3600))
        require(w.subscribe(1, f"{base}/will", 1) == [1], "QoS 1 not granted")
        w.close()
        c = self.client(self.a)
        wp = Properties(PacketTypes.WILLMESSAGE)
        wp.WillDelayInterval = 60
        c.client.will_set(f"{base}/will", b"gone", qos=1, properties=wp)
        c.connect(props=connect_props(SessionExpiryInterval=2))
        c.subscribe(f"{base}/x", SubscribeOptions(qos=1))
        c.drop()

    def expired_after(self) -> None:
        base = f"things/{self.a.name}/expired"
        c = self.client(self.a)
        present, _, _ = c.connect(clean=False, props=connect_props(SessionExpiryInterval=2))
        require(not present, "a session that expired while the server was down was resumed")
        c.disconnect(props=_disconnect_expiry(0))
        w = self.raw(self.b)
        present, _, _ = w.connect(clean=False, props=prop_u32(0x11, 3600))
        require(present, "the watcher's session was not resumed after the restart")
        will = w.pub("the will of the expired session")
        require(will.topic == f"{base}/will" and will.payload == b"gone", f"got {will}")
        w.ack(PUBACK, will.packet_id or 0)
        extra = w.read(2.0)
        require(extra is None, f"the will came more than once ({extra})")
        w.send(0xE0, b"\x00\x05" + prop_u32(0x11, 0))
        w.close()

    # AWS strict per policy: identity a's policy asks for it, b's does not.
    def strict_policy(self) -> None:
        r = self.raw(self.a)
        _, _, props = r.connect()
        require(props.get(0x24) == 1, f"CONNACK Maximum QoS {props.get(0x24)} for the strict thing, expected 1")
        require(r.subscribe(1, f"{self.base}/strict", 2) == [1], "QoS 2 granted as 1 under the strict policy")
        r.publish(f"{self.base}/strict", b"x", 2, packet_id=1)
        d = r.expect(DISCONNECT, "DISCONNECT for QoS 2")
        require(d.body[0] == 0x9B, f"reason {d.body[0]:#x}, expected 0x9B")
        r.close()
        o = self.raw(self.b)
        _, _, props = o.connect()
        require(props.get(0x24, 2) == 2, f"CONNACK limits QoS for a thing without the strict policy: {props}")
        require(o.subscribe(1, f"{self.base}/strict", 2) == [2], "QoS 2 not granted")
        o.publish(f"{self.base}/strict", b"y", 2, packet_id=1)
        require(o.expect(PUBREC, "PUBREC").reason() == 0, "PUBREC")
        o.ack(PUBREL, 1)
        # PUBCOMP and the delivery of its own message, in either order.
        got = [o.read(), o.read()]
        kinds = sorted(p.kind for p in got if p is not None)
        require(kinds == [PUBLISH, PUBCOMP], f"expected PUBCOMP and PUBLISH, got {got}")
        m = Raw.parse(next(p for p in got if p is not None and p.kind == PUBLISH))
        require(m.qos == 2 and m.payload == b"y", f"got {m}")
        o.close()


def _disconnect_expiry(secs: int) -> Properties:
    p = Properties(PacketTypes.DISCONNECT)
    p.SessionExpiryInterval = secs
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--check", required=True)
    p.add_argument("--host", default="localhost")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cafile", required=True)
    p.add_argument("--max-keep-alive", type=int, default=1200)
    for who in ("a", "b"):
        p.add_argument(f"--{who}-cert", required=True)
        p.add_argument(f"--{who}-key", required=True)
        p.add_argument(f"--{who}-id", required=True)
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    faulthandler.dump_traceback_later(WATCHDOG, exit=True)
    args = parse_args(argv)
    checks = Checks(args)
    check = getattr(checks, args.check, None)
    if check is None or args.check.startswith("_"):
        print(f"FAIL unknown check {args.check}", file=sys.stderr)
        return 2
    try:
        check()
    except CheckFailed as e:
        print(f"FAIL {args.check}: {e}", file=sys.stderr)
        return 1
    except Exception:
        print(f"FAIL {args.check}: unexpected error", file=sys.stderr)
        traceback.print_exc()
        return 1
    print(f"ok {args.check}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
