#!/usr/bin/env python3
"""Device shadows of Onramp driven by the AWS IoT Device SDK for Python.

The device side uses the SDK exactly as a device built for AWS IoT Core would:
``awsiot.mqtt5_client_builder.mtls_from_path`` (MQTT 5) or
``awsiot.mqtt_connection_builder.mtls_from_path`` (MQTT 3.1.1) with only the
endpoint, port and CA changed, and the request-response shadow client
``awsiot.iotshadow.IotShadowClientV2``. The operator side is Onramp's REST API
(``POST /api/v1/things/<thing>/shadow``), called with ``urllib``.

For each protocol the checks are:

a. get of a missing shadow is rejected with code 404;
b. desired state set over REST reaches the device as a delta with the version
   the REST API answered;
c. the device reports the state through the SDK: accepted, version + 1, the
   SDK's client token echoed, and the update/documents event matches;
d. get: desired and reported are equal and there is no delta;
e. the named shadow ``cfg``: update, get and delete through the SDK;
f. delete of the classic shadow is accepted; a get afterwards is 404.

Each passed check prints ``ok <protocol> <name>``; the first failure prints
``FAIL ...`` on stderr and the script exits with status 1. Every wait has a
timeout, and a watchdog ends the script if it ever hangs.

Requires the pinned ``awsiotsdk`` (``pip install -r tests/requirements.txt``).
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import queue
import ssl
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
from concurrent.futures import Future
from typing import Any, Callable

import awscrt.mqtt
import awscrt.mqtt5
import awscrt.mqtt_request_response as rr
import awsiot
from awsiot import iotshadow, mqtt5_client_builder, mqtt_connection_builder

# How long any single expected event may take.
TIMEOUT = 10.0
# The whole run is aborted (with a traceback of every thread) after this long.
WATCHDOG = 180
# Spacing between two CONNECTs of one thing: Onramp admits about one CONNECT
# per second per client id, as AWS IoT Core does.
RECONNECT_SPACING = 1.1
NAMED = "cfg"


from sdk_checks import CheckFailed, describe, require, wait_rejected, wait_result  # noqa: E402


class Rest:
    """Onramp's REST API, as an operator with a bearer key."""

    def __init__(self, base_url: str, api_key: str, cafile: str) -> None:
        self.base = base_url.rstrip("/")
        self.key = api_key
        self.ctx = ssl.create_default_context(cafile=cafile)

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.key}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=TIMEOUT) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        try:
            return status, json.loads(raw) if raw else None
        except ValueError as e:
            raise CheckFailed(f"REST {method} {path}: {status} with a body that is not JSON: {raw!r}") from e


class Stream:
    """One SDK streaming operation (delta or documents) and what it delivered."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.events: queue.Queue[Any] = queue.Queue()
        self.failures: list[str] = []
        self.established = threading.Event()
        self.halted: str | None = None
        self.operation: rr.StreamingOperation | None = None

    def options(self) -> Any:
        def on_status(event: rr.SubscriptionStatusEvent) -> None:
            if event.type == rr.SubscriptionStatusEventType.SUBSCRIPTION_ESTABLISHED:
                self.established.set()
            elif event.type == rr.SubscriptionStatusEventType.SUBSCRIPTION_HALTED:
                self.halted = f"subscription halted: {event.error}"
                self.established.set()

        def on_failure(failure: Any) -> None:
            self.failures.append(f"{failure.message}: {failure.inner_error!r} payload={failure.payload!r}")

        return awsiot.ServiceStreamOptions(
            incoming_event_listener=self.events.put,
            subscription_status_listener=on_status,
            deserialization_failure_listener=on_failure,
        )

    def open(self, operation: rr.StreamingOperation) -> None:
        self.operation = operation
        operation.open()
        if not self.established.wait(TIMEOUT):
            raise CheckFailed(f"{self.label}: stream subscription not established within {TIMEOUT:.0f} s")
        require(self.halted is None, f"{self.label}: {self.halted}")

    def next(self, matches: Callable[[Any], bool], what: str) -> Any:
        deadline = time.monotonic() + TIMEOUT
        seen = []
        while True:
            require(not self.failures, f"{self.label}: the SDK could not read an event: {self.failures}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise CheckFailed(f"{self.label}: no {what} within {TIMEOUT:.0f} s (saw {seen})")
            try:
                event = self.events.get(timeout=min(left, 0.2))
            except queue.Empty:
                continue
            if matches(event):
                return event
            seen.append(event)

    def close(self) -> None:
        if self.operation is not None:
            self.operation.close()
            self.operation = None


class Device:
    """A connection made by the SDK's builders, MQTT 5 or MQTT 3.1.1."""

    def __init__(self, args: argparse.Namespace, protocol: str) -> None:
        self.protocol = protocol
        self.client: awscrt.mqtt5.Client | None = None
        self.connection: awscrt.mqtt.Connection | None = None
        self.stopped = threading.Event()
        self.connack: awscrt.mqtt5.ConnackPacket | None = None
        self.settings: awscrt.mqtt5.NegotiatedSettings | None = None
        if protocol == "5":
            self._connect5(args)
        else:
            self._connect311(args)

    def _connect5(self, args: argparse.Namespace) -> None:
        connected: Future = Future()

        def on_success(data: awscrt.mqtt5.LifecycleConnectSuccessData) -> None:
            if not connected.done():
                connected.set_result(data)

        def on_failure(data: awscrt.mqtt5.LifecycleConnectFailureData) -> None:
            if not connected.done():
                reason = data.connack_packet.reason_code if data.connack_packet else None
                connected.set_exception(CheckFailed(f"MQTT 5 connect failed: {data.exception!r}, CONNACK reason {reason!r}"))

        self.client = mqtt5_client_builder.mtls_from_path(
            endpoint=args.endpoint,
            port=args.port,
            cert_filepath=args.cert,
            pri_key_filepath=args.key,
            ca_filepath=args.cafile,
            client_id=args.thing,
            on_lifecycle_connection_success=on_success,
            on_lifecycle_connection_failure=on_failure,
            on_lifecycle_stopped=lambda _data: self.stopped.set(),
        )
        self.client.start()
        try:
            data = connected.result(timeout=TIMEOUT)
        except TimeoutError as e:
            raise CheckFailed(f"MQTT 5: not connected within {TIMEOUT:.0f} s") from e
        self.connack = data.connack_packet
        self.settings = data.negotiated_settings

    def _connect311(self, args: argparse.Namespace) -> None:
        self.connection = mqtt_connection_builder.mtls_from_path(
            endpoint=args.endpoint,
            port=args.port,
            cert_filepath=args.cert,
            pri_key_filepath=args.key,
            ca_filepath=args.cafile,
            client_id=args.thing,
            clean_session=True,
            keep_alive_secs=30,
        )
        try:
            self.connection.connect().result(timeout=TIMEOUT)
        except TimeoutError as e:
            raise CheckFailed(f"MQTT 3.1.1: not connected within {TIMEOUT:.0f} s") from e
        except Exception as e:
            raise CheckFailed(f"MQTT 3.1.1 connect failed: {e!r}") from e

    @property
    def protocol_client(self) -> Any:
        return self.client if self.client is not None else self.connection

    def close(self) -> None:
        if self.client is not None:
            self.client.stop()
            self.stopped.wait(TIMEOUT)
            self.client = None
        if self.connection is not None:
            try:
                self.connection.disconnect().result(timeout=TIMEOUT)
            except Exception:
                pass
            self.connection = None


class Checks:
    def __init__(self, args: argparse.Namespace, rest: Rest, protocol: str) -> None:
        self.args = args
        self.rest = rest
        self.protocol = protocol
        self.thing = args.thing
        self.label = "mqtt5" if protocol == "5" else "mqtt311"
        self.current = "connect"
        self.passed = 0
        self.device: Device | None = None
        self.shadow: iotshadow.IotShadowClientV2 | None = None
        self.delta = Stream("delta stream")
        self.documents = Stream("documents stream")
        self.version = 0

    def ok(self, name: str, detail: str = "") -> None:
        self.passed += 1
        suffix = f" ({detail})" if detail else ""
        print(f"ok {self.label} {name}{suffix}", flush=True)

    def run(self) -> None:
        self.device = Device(self.args, self.protocol)
        if self.device.connack is not None:
            s = self.device.settings
            require(
                self.device.connack.reason_code == awscrt.mqtt5.ConnectReasonCode.SUCCESS,
                f"CONNACK reason {self.device.connack.reason_code!r}",
            )
            require(
                s is not None and s.client_id == self.thing,
                f"negotiated client id {getattr(s, 'client_id', None)!r}, expected {self.thing!r}",
            )
        options = rr.ClientOptions(
            max_request_response_subscriptions=4,
            max_streaming_subscriptions=4,
            operation_timeout_in_seconds=int(TIMEOUT),
        )
        self.shadow = iotshadow.IotShadowClientV2(self.device.protocol_client, options)
        self.ok("connect", f"MQTT {'5' if self.protocol == '5' else '3.1.1'} through the SDK builder")
        for name, check in [
            ("missing_shadow_is_404", self.check_missing),
            ("rest_desired_reaches_device_as_delta", self.check_delta),
            ("device_report_accepted", self.check_report),
            ("get_shows_no_delta", self.check_get),
            ("named_shadow", self.check_named),
            ("delete_then_404", self.check_delete),
        ]:
            self.current = name
            detail = check()
            self.ok(name, detail or "")

    def cleanup(self) -> None:
        for s in (self.delta, self.documents):
            try:
                s.close()
            except Exception:
                pass
        self.shadow = None
        if self.device is not None:
            self.device.close()
            self.device = None

    # a
    def check_missing(self) -> str:
        assert self.shadow
        request = iotshadow.GetShadowRequest(thing_name=self.thing)
        err = wait_rejected(self.shadow.get_shadow(request), "get of the missing classic shadow")
        require(err.code == 404, f"get of a missing shadow rejected with code {err.code!r}, expected 404")
        require(
            err.client_token == request.client_token,
            f"rejection clientToken {err.client_token!r}, expected the request's {request.client_token!r}",
        )
        require(isinstance(err.message, str) and err.message, f"rejection message is {err.message!r}")
        return f"code 404, message {err.message!r}"

    # b
    def check_delta(self) -> str:
        assert self.shadow
        self.delta.open(
            self.shadow.create_shadow_delta_updated_stream(
                iotshadow.ShadowDeltaUpdatedSubscriptionRequest(thing_name=self.thing), self.delta.options()
            )
        )
        self.documents.open(
            self.shadow.create_shadow_updated_stream(
                iotshadow.ShadowUpdatedSubscriptionRequest(thing_name=self.thing), self.documents.options()
            )
        )
        status, body = self.rest.call(
            "POST", f"/api/v1/things/{self.thing}/shadow", {"state": {"desired": {"color": "green"}}}
        )
        require(status == 200, f"REST POST of desired state answered {status}: {body}")
        version = body.get("version") if isinstance(body, dict) else None
        require(isinstance(version, int) and version >= 1, f"REST POST answered without a version: {body}")
        event = self.delta.next(lambda e: e.version == version, f"delta with version {version}")
        require(event.state == {"color": "green"}, f"delta state {event.state!r}, expected {{'color': 'green'}}")
        require(event.timestamp is not None, "delta event has no timestamp")
        require(
            isinstance(event.metadata, dict) and "color" in event.metadata,
            f"delta metadata {event.metadata!r} lacks the color timestamp",
        )
        self.version = version
        return f"version {version}"

    # c
    def check_report(self) -> str:
        assert self.shadow
        request = iotshadow.UpdateShadowRequest(
            thing_name=self.thing,
            state=iotshadow.ShadowState(reported={"color": "green"}),
        )
        response = wait_result(self.shadow.update_shadow(request), "update of reported state")
        expected = self.version + 1
        require(response.version == expected, f"update accepted with version {response.version!r}, expected {expected}")
        require(
            response.client_token == request.client_token,
            f"update accepted with clientToken {response.client_token!r}, expected {request.client_token!r}",
        )
        require(
            response.state is not None and response.state.reported == {"color": "green"},
            f"accepted state {response.state!r}",
        )
        require(response.timestamp is not None, "update accepted without a timestamp")
        require(
            response.metadata is not None
            and isinstance(response.metadata.reported, dict)
            and "color" in response.metadata.reported,
            f"accepted metadata {response.metadata!r} lacks reported.color",
        )
        docs = self.documents.next(
            lambda e: e.current is not None and e.current.version == expected, f"documents event with version {expected}"
        )
        require(
            docs.previous is not None and docs.previous.version == self.version,
            f"documents previous {docs.previous!r}, expected version {self.version}",
        )
        require(
            docs.current.state is not None
            and docs.current.state.reported == {"color": "green"}
            and docs.current.state.desired == {"color": "green"},
            f"documents current state {docs.current.state!r}",
        )
        self.version = expected
        return f"version {expected}, clientToken echoed"

    # d
    def check_get(self) -> str:
        assert self.shadow
        request = iotshadow.GetShadowRequest(thing_name=self.thing)
        response = wait_result(self.shadow.get_shadow(request), "get of the classic shadow")
        require(response.version == self.version, f"get version {response.version!r}, expected {self.version}")
        require(
            response.client_token == request.client_token,
            f"get clientToken {response.client_token!r}, expected {request.client_token!r}",
        )
        st = response.state
        require(st is not None, "get accepted without a state")
        require(st.desired == {"color": "green"}, f"get desired {st.desired!r}")
        require(st.reported == {"color": "green"}, f"get reported {st.reported!r}")
        require(st.delta is None, f"get shows a delta {st.delta!r} although desired == reported")
        return f"version {response.version}"

    # e
    def check_named(self) -> str:
        assert self.shadow
        request = iotshadow.UpdateNamedShadowRequest(
            thing_name=self.thing,
            shadow_name=NAMED,
            state=iotshadow.ShadowState(reported={"interval": 30}),
        )
        updated = wait_result(self.shadow.update_named_shadow(request), f"update of named shadow {NAMED}")
        require(
            updated.client_token == request.client_token,
            f"named update clientToken {updated.client_token!r}, expected {request.client_token!r}",
        )
        require(isinstance(updated.version, int) and updated.version >= 1, f"named update version {updated.version!r}")
        require(
            updated.state is not None and updated.state.reported == {"interval": 30},
            f"named update accepted state {updated.state!r}",
        )
        get = iotshadow.GetNamedShadowRequest(thing_name=self.thing, shadow_name=NAMED)
        got = wait_result(self.shadow.get_named_shadow(get), f"get of named shadow {NAMED}")
        require(got.version == updated.version, f"named get version {got.version!r}, expected {updated.version}")
        require(
            got.state is not None and got.state.reported == {"interval": 30} and got.state.desired is None,
            f"named get state {got.state!r}",
        )
        # The classic shadow is untouched by the named one.
        classic = wait_result(
            self.shadow.get_shadow(iotshadow.GetShadowRequest(thing_name=self.thing)), "get of the classic shadow"
        )
        require(classic.version == self.version, f"classic version moved to {classic.version!r} (was {self.version})")
        deleted = wait_result(
            self.shadow.delete_named_shadow(iotshadow.DeleteNamedShadowRequest(thing_name=self.thing, shadow_name=NAMED)),
            f"delete of named shadow {NAMED}",
        )
        require(deleted.version == updated.version, f"named delete version {deleted.version!r}, expected {updated.version}")
        return f"version {updated.version}"

    # f
    def check_delete(self) -> str:
        assert self.shadow
        request = iotshadow.DeleteShadowRequest(thing_name=self.thing)
        deleted = wait_result(self.shadow.delete_shadow(request), "delete of the classic shadow")
        require(deleted.version == self.version, f"delete accepted with version {deleted.version!r}, expected {self.version}")
        require(
            deleted.client_token == request.client_token,
            f"delete clientToken {deleted.client_token!r}, expected {request.client_token!r}",
        )
        err = wait_rejected(
            self.shadow.get_shadow(iotshadow.GetShadowRequest(thing_name=self.thing)), "get after delete"
        )
        require(err.code == 404, f"get after delete rejected with code {err.code!r}, expected 404")
        return f"version {deleted.version}"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--endpoint", default="localhost", help="MQTT host name (must match the server certificate)")
    p.add_argument("--port", required=True, type=int, help="Onramp MQTT port")
    p.add_argument("--https-url", required=True, help="Onramp HTTPS base URL, e.g. https://localhost:8443")
    p.add_argument("--api-key", required=True, help="operator API key for the REST API")
    p.add_argument("--cafile", required=True, help="root CA that issued the server certificates")
    p.add_argument("--cert", required=True, help="device certificate (PEM)")
    p.add_argument("--key", required=True, help="device private key (PEM)")
    p.add_argument("--thing", required=True, help="thing name, used as the client id")
    p.add_argument("--protocol", default="both", choices=["5", "311", "both"])
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    faulthandler.dump_traceback_later(WATCHDOG, exit=True)
    rest = Rest(args.https_url, args.api_key, args.cafile)
    protocols = ["5", "311"] if args.protocol == "both" else [args.protocol]
    total = 0
    try:
        for i, protocol in enumerate(protocols):
            if i:
                time.sleep(RECONNECT_SPACING)
            checks = Checks(args, rest, protocol)
            try:
                checks.run()
            except CheckFailed as e:
                print(f"FAIL {checks.label} {checks.current}: {e}", file=sys.stderr, flush=True)
                return 1
            except Exception:
                print(f"FAIL {checks.label} {checks.current}: unexpected error", file=sys.stderr)
                traceback.print_exc()
                sys.stderr.flush()
                return 1
            finally:
                checks.cleanup()
            total += checks.passed
    finally:
        faulthandler.cancel_dump_traceback_later()
    print(f"all {total} checks passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
