#!/usr/bin/env python3
"""Fleet provisioning by claim on Onramp, driven by the AWS IoT Device SDK for Python.

The device side uses the SDK exactly as a device built for AWS IoT Core would:
``awsiot.mqtt5_client_builder.mtls_from_path`` (MQTT 5) or
``awsiot.mqtt_connection_builder.mtls_from_path`` (MQTT 3.1.1) with only the
endpoint, port and CA changed, and the request-response identity client
``awsiot.iotidentity.IotIdentityClientV2``.

For each protocol (``mqtt5``, ``mqtt3``) the checks are:

keys-register
    Connected with the shared claim certificate: CreateKeysAndCertificate
    (``$aws/certificates/create/json``) is accepted with a certificate id,
    certificate, private key and ownership token; RegisterThing
    (``$aws/provisioning-templates/<template>/provision/json``) with
    ``{"SerialNumber": "<prefix>-<protocol>-keys"}`` is accepted with a thing
    name and a device configuration object.
bad-token-rejected
    On the same claim connection, RegisterThing with the ownership token
    ``not-a-token`` is rejected with statusCode 400 and an errorCode.
keys-reconnect-publish
    The claim connection is closed; the device connects again with the new
    certificate and key and client id = thing name, subscribes to
    ``device/<thing>/telemetry``, publishes there and receives its message.
csr-register, csr-reconnect-publish
    The same with CreateCertificateFromCsr
    (``$aws/certificates/create-from-csr/json``) and the CSR and key given on
    the command line; the serial number is ``<prefix>-<protocol>-csr``.

Each passed check prints ``ok <protocol> <name>``; each registration also
prints ``thing <protocol> <keys|csr> <thingName> <certificateId>`` for the
caller to compare with the registry. The new certificates (and, for
CreateKeysAndCertificate, the private key, mode 0600) are written to
``--out-dir`` as ``<protocol>-<flow>.cert.pem`` and ``<protocol>-keys.key.pem``.
The first failure prints ``FAIL ...`` on stderr and the script exits with
status 1. Every wait has a timeout, and a watchdog ends the script if it ever
hangs.

Both protocols submit the same CSR, so the server must issue a certificate
for a public key it has issued one for before (AWS IoT Core does).

Requires the pinned ``awsiotsdk`` (``pip install -r tests/requirements.txt``).
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import queue
import secrets
import sys
import threading
import time
import traceback
from concurrent.futures import Future
from typing import Any

import awscrt.mqtt
import awscrt.mqtt5
import awscrt.mqtt_request_response as rr
from awsiot import iotidentity, mqtt5_client_builder, mqtt_connection_builder

# How long any single expected event may take.
TIMEOUT = 10.0
# The whole run is aborted (with a traceback of every thread) after this long.
WATCHDOG = 240
# Spacing between two CONNECTs of one identity: Onramp admits about one
# CONNECT per second per identity, as AWS IoT Core does, and every claim
# connection presents the same claim certificate.
RECONNECT_SPACING = 1.1
PROTOCOLS = {"mqtt5": "MQTT 5", "mqtt3": "MQTT 3.1.1"}
BAD_TOKEN = "not-a-token"


from sdk_checks import CheckFailed, describe, require, wait_rejected, wait_result  # noqa: E402


def non_empty_str(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != ""


def write_file(path: str, text: str, private: bool = False) -> None:
    """Writes a PEM file; a private one is created with mode 0600 from the start."""
    if os.path.exists(path):
        os.remove(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(text if text.endswith("\n") else text + "\n")
    if private:
        os.chmod(path, 0o600)


class Pacer:
    """Keeps CONNECTs of one identity at least RECONNECT_SPACING apart."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}

    def before_connect(self, identity: str) -> None:
        last = self._last.get(identity)
        if last is not None:
            gap = RECONNECT_SPACING - (time.monotonic() - last)
            if gap > 0:
                # The per-identity connect rate limit is a clock, not an event
                # that could be waited for: sleeping is the right tool here.
                time.sleep(gap)
        self._last[identity] = time.monotonic()


class Connection:
    """One connection made by the SDK's builders, MQTT 5 or MQTT 3.1.1."""

    def __init__(self, args: argparse.Namespace, protocol: str, cert: str, key: str, client_id: str) -> None:
        self.protocol = protocol
        self.client_id = client_id
        self.client: awscrt.mqtt5.Client | None = None
        self.connection: awscrt.mqtt.Connection | None = None
        self.stopped = threading.Event()
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        if protocol == "mqtt5":
            self._connect5(args, cert, key)
        else:
            self._connect311(args, cert, key)

    def _connect5(self, args: argparse.Namespace, cert: str, key: str) -> None:
        connected: Future = Future()

        def on_success(data: awscrt.mqtt5.LifecycleConnectSuccessData) -> None:
            if not connected.done():
                connected.set_result(data)

        def on_failure(data: awscrt.mqtt5.LifecycleConnectFailureData) -> None:
            if not connected.done():
                reason = data.connack_packet.reason_code if data.connack_packet else None
                connected.set_exception(
                    CheckFailed(f"MQTT 5 connect as {self.client_id!r} failed: {data.exception!r}, CONNACK reason {reason!r}")
                )

        def on_publish(data: awscrt.mqtt5.PublishReceivedData) -> None:
            packet = data.publish_packet
            self.messages.put((packet.topic, bytes(packet.payload or b"")))

        self.client = mqtt5_client_builder.mtls_from_path(
            endpoint=args.endpoint,
            port=args.port,
            cert_filepath=cert,
            pri_key_filepath=key,
            ca_filepath=args.ca,
            client_id=self.client_id,
            on_publish_received=on_publish,
            on_lifecycle_connection_success=on_success,
            on_lifecycle_connection_failure=on_failure,
            on_lifecycle_stopped=lambda _data: self.stopped.set(),
        )
        self.client.start()
        try:
            data = connected.result(timeout=TIMEOUT)
        except TimeoutError as e:
            raise CheckFailed(f"MQTT 5: {self.client_id!r} not connected within {TIMEOUT:.0f} s") from e
        connack = data.connack_packet
        require(
            connack is not None and connack.reason_code == awscrt.mqtt5.ConnectReasonCode.SUCCESS,
            f"CONNACK reason {getattr(connack, 'reason_code', None)!r}",
        )
        settings = data.negotiated_settings
        require(
            settings is not None and settings.client_id == self.client_id,
            f"negotiated client id {getattr(settings, 'client_id', None)!r}, expected {self.client_id!r}",
        )

    def _connect311(self, args: argparse.Namespace, cert: str, key: str) -> None:
        self.connection = mqtt_connection_builder.mtls_from_path(
            endpoint=args.endpoint,
            port=args.port,
            cert_filepath=cert,
            pri_key_filepath=key,
            ca_filepath=args.ca,
            client_id=self.client_id,
            clean_session=True,
            keep_alive_secs=30,
        )
        try:
            self.connection.connect().result(timeout=TIMEOUT)
        except TimeoutError as e:
            raise CheckFailed(f"MQTT 3.1.1: {self.client_id!r} not connected within {TIMEOUT:.0f} s") from e
        except Exception as e:
            raise CheckFailed(f"MQTT 3.1.1 connect as {self.client_id!r} failed: {e!r}") from e

    @property
    def protocol_client(self) -> Any:
        return self.client if self.client is not None else self.connection

    def subscribe(self, topic: str) -> None:
        if self.client is not None:
            packet = awscrt.mqtt5.SubscribePacket(
                subscriptions=[awscrt.mqtt5.Subscription(topic_filter=topic, qos=awscrt.mqtt5.QoS.AT_LEAST_ONCE)]
            )
            try:
                suback = self.client.subscribe(packet).result(timeout=TIMEOUT)
            except TimeoutError as e:
                raise CheckFailed(f"SUBSCRIBE {topic}: no SUBACK within {TIMEOUT:.0f} s") from e
            except Exception as e:
                raise CheckFailed(f"SUBSCRIBE {topic} failed: {e!r}") from e
            codes = list(suback.reason_codes or [])
            require(
                len(codes) == 1 and int(codes[0]) < 0x80,
                f"SUBSCRIBE {topic} refused: reason codes {codes!r} ({suback.reason_string!r})",
            )
            return
        assert self.connection is not None

        def on_message(topic: str, payload: bytes, **_kwargs: Any) -> None:
            self.messages.put((topic, bytes(payload)))

        future, _ = self.connection.subscribe(topic, awscrt.mqtt.QoS.AT_LEAST_ONCE, on_message)
        try:
            result = future.result(timeout=TIMEOUT)
        except TimeoutError as e:
            raise CheckFailed(f"SUBSCRIBE {topic}: no SUBACK within {TIMEOUT:.0f} s") from e
        except Exception as e:
            raise CheckFailed(f"SUBSCRIBE {topic} failed: {e!r}") from e
        require(result.get("qos") is not None, f"SUBSCRIBE {topic} refused: {result!r}")

    def publish(self, topic: str, payload: bytes) -> None:
        if self.client is not None:
            packet = awscrt.mqtt5.PublishPacket(topic=topic, payload=payload, qos=awscrt.mqtt5.QoS.AT_LEAST_ONCE)
            try:
                done = self.client.publish(packet).result(timeout=TIMEOUT)
            except TimeoutError as e:
                raise CheckFailed(f"PUBLISH {topic}: no PUBACK within {TIMEOUT:.0f} s") from e
            except Exception as e:
                raise CheckFailed(f"PUBLISH {topic} failed: {e!r}") from e
            puback = done.puback
            require(
                puback is not None and int(puback.reason_code) < 0x80,
                f"PUBLISH {topic}: PUBACK {getattr(puback, 'reason_code', None)!r} "
                f"({getattr(puback, 'reason_string', None)!r})",
            )
            return
        assert self.connection is not None
        future, _ = self.connection.publish(topic, payload, awscrt.mqtt.QoS.AT_LEAST_ONCE)
        try:
            future.result(timeout=TIMEOUT)
        except TimeoutError as e:
            raise CheckFailed(f"PUBLISH {topic}: no PUBACK within {TIMEOUT:.0f} s") from e
        except Exception as e:
            raise CheckFailed(f"PUBLISH {topic} failed: {e!r}") from e

    def expect_message(self, topic: str, payload: bytes) -> None:
        deadline = time.monotonic() + TIMEOUT
        seen = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CheckFailed(f"no message {payload!r} on {topic} within {TIMEOUT:.0f} s (saw {seen})")
            try:
                got = self.messages.get(timeout=min(left, 0.2))
            except queue.Empty:
                continue
            if got == (topic, payload):
                return
            seen.append(got)

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
    def __init__(self, args: argparse.Namespace, protocol: str, pacer: Pacer) -> None:
        self.args = args
        self.protocol = protocol
        self.pacer = pacer
        self.current = "claim-connect"
        self.passed = 0
        self.claim: Connection | None = None
        self.identity: iotidentity.IotIdentityClientV2 | None = None
        self.device: Connection | None = None
        with open(args.claim_cert) as f:
            self.claim_pem = f.read().strip()

    def ok(self, name: str, detail: str = "") -> None:
        self.passed += 1
        suffix = f" ({detail})" if detail else ""
        print(f"ok {self.protocol} {name}{suffix}", flush=True)

    def run(self) -> None:
        for flow in ("keys", "csr"):
            self.current = f"{flow}-register"
            thing, cert, key = self.register(flow)
            if flow == "keys":
                self.current = "bad-token-rejected"
                self.ok("bad-token-rejected", self.check_bad_token())
            self.close_claim()
            self.current = f"{flow}-reconnect-publish"
            self.ok(f"{flow}-reconnect-publish", self.reconnect_and_publish(thing, cert, key))
            self.close_device()

    def cleanup(self) -> None:
        self.close_claim()
        self.close_device()

    def close_claim(self) -> None:
        # The request-response client goes before the connection it uses.
        self.identity = None
        if self.claim is not None:
            self.claim.close()
            self.claim = None

    def close_device(self) -> None:
        if self.device is not None:
            self.device.close()
            self.device = None

    def connect_claim(self, flow: str) -> iotidentity.IotIdentityClientV2:
        client_id = f"claim-{self.args.serial_prefix}-{self.protocol}-{flow}"
        self.pacer.before_connect("claim")
        self.claim = Connection(self.args, self.protocol, self.args.claim_cert, self.args.claim_key, client_id)
        options = rr.ClientOptions(
            max_request_response_subscriptions=4,
            max_streaming_subscriptions=2,
            operation_timeout_in_seconds=int(TIMEOUT),
        )
        self.identity = iotidentity.IotIdentityClientV2(self.claim.protocol_client, options)
        return self.identity

    def register(self, flow: str) -> tuple[str, str, str]:
        """Create a certificate over the claim connection and register a thing
        with it; returns the thing name and the certificate and key files."""
        identity = self.connect_claim(flow)
        out = self.args.out_dir
        cert_path = os.path.join(out, f"{self.protocol}-{flow}.cert.pem")
        if flow == "keys":
            created = wait_result(
                identity.create_keys_and_certificate(iotidentity.CreateKeysAndCertificateRequest()),
                "CreateKeysAndCertificate",
            )
            for field, value in [
                ("certificateId", created.certificate_id),
                ("certificatePem", created.certificate_pem),
                ("privateKey", created.private_key),
                ("certificateOwnershipToken", created.certificate_ownership_token),
            ]:
                require(non_empty_str(value), f"CreateKeysAndCertificate accepted with {field} = {value!r}")
            require(
                "PRIVATE KEY-----" in created.private_key,
                f"privateKey is not a PEM private key: {created.private_key[:40]!r}...",
            )
            key_path = os.path.join(out, f"{self.protocol}-keys.key.pem")
            write_file(key_path, created.private_key, private=True)
        else:
            with open(self.args.csr) as f:
                csr_pem = f.read()
            created = wait_result(
                identity.create_certificate_from_csr(
                    iotidentity.CreateCertificateFromCsrRequest(certificate_signing_request=csr_pem)
                ),
                "CreateCertificateFromCsr",
            )
            for field, value in [
                ("certificateId", created.certificate_id),
                ("certificatePem", created.certificate_pem),
                ("certificateOwnershipToken", created.certificate_ownership_token),
            ]:
                require(non_empty_str(value), f"CreateCertificateFromCsr accepted with {field} = {value!r}")
            key_path = self.args.csr_key
        require(
            "-----BEGIN CERTIFICATE-----" in created.certificate_pem,
            f"certificatePem is not a PEM certificate: {created.certificate_pem[:40]!r}...",
        )
        require(created.certificate_pem.strip() != self.claim_pem, "the new certificate is the claim certificate")
        write_file(cert_path, created.certificate_pem)

        serial = f"{self.args.serial_prefix}-{self.protocol}-{flow}"
        registered = wait_result(
            identity.register_thing(
                iotidentity.RegisterThingRequest(
                    template_name=self.args.template,
                    certificate_ownership_token=created.certificate_ownership_token,
                    parameters={"SerialNumber": serial},
                )
            ),
            f"RegisterThing of {serial}",
        )
        require(non_empty_str(registered.thing_name), f"RegisterThing accepted with thingName = {registered.thing_name!r}")
        require(
            isinstance(registered.device_configuration, dict),
            f"RegisterThing accepted with deviceConfiguration = {registered.device_configuration!r}, expected an object",
        )
        thing = registered.thing_name
        print(f"thing {self.protocol} {flow} {thing} {created.certificate_id}", flush=True)
        self.ok(
            f"{flow}-register",
            f"thing {thing}, certificate {created.certificate_id}, "
            f"deviceConfiguration {registered.device_configuration!r}",
        )
        return thing, cert_path, key_path

    def check_bad_token(self) -> str:
        assert self.identity is not None
        serial = f"{self.args.serial_prefix}-{self.protocol}-bad"
        err = wait_rejected(
            self.identity.register_thing(
                iotidentity.RegisterThingRequest(
                    template_name=self.args.template,
                    certificate_ownership_token=BAD_TOKEN,
                    parameters={"SerialNumber": serial},
                )
            ),
            f"RegisterThing with the ownership token {BAD_TOKEN!r}",
        )
        require(err.status_code == 400, f"rejected with statusCode {err.status_code!r}, expected 400")
        require(non_empty_str(err.error_code), f"rejected with errorCode {err.error_code!r}")
        return f"statusCode 400, errorCode {err.error_code}, errorMessage {err.error_message!r}"

    def reconnect_and_publish(self, thing: str, cert: str, key: str) -> str:
        self.pacer.before_connect(thing)
        self.device = Connection(self.args, self.protocol, cert, key, thing)
        topic = f"device/{thing}/telemetry"
        self.device.subscribe(topic)
        payload = f'{{"check":"fleet","nonce":"{secrets.token_hex(8)}"}}'.encode()
        self.device.publish(topic, payload)
        self.device.expect_message(topic, payload)
        return f"{PROTOCOLS[self.protocol]} as {thing}, {topic} round trip"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--endpoint", default="localhost", help="MQTT host name (must match the server certificate)")
    p.add_argument("--port", required=True, type=int, help="Onramp MQTT port")
    p.add_argument("--ca", "--cafile", dest="ca", required=True, help="root CA that issued the server certificates")
    p.add_argument("--claim-cert", required=True, help="claim certificate (PEM)")
    p.add_argument("--claim-key", required=True, help="claim private key (PEM)")
    p.add_argument("--template", required=True, help="provisioning template name")
    p.add_argument("--csr", required=True, help="certificate signing request for CreateCertificateFromCsr (PEM)")
    p.add_argument("--csr-key", required=True, help="the CSR's private key (PEM)")
    p.add_argument("--serial-prefix", required=True, help="SerialNumber is <prefix>-<protocol>-<keys|csr>")
    p.add_argument("--out-dir", required=True, help="directory the new certificates and keys are written to")
    p.add_argument("--protocol", default="both", choices=["mqtt5", "mqtt3", "both"])
    args = p.parse_args(argv)
    if not os.path.isdir(args.out_dir):
        p.error(f"--out-dir {args.out_dir} is not a directory")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    faulthandler.dump_traceback_later(WATCHDOG, exit=True)
    protocols = ["mqtt5", "mqtt3"] if args.protocol == "both" else [args.protocol]
    pacer = Pacer()
    total = 0
    try:
        for protocol in protocols:
            checks = Checks(args, protocol, pacer)
            try:
                checks.run()
            except CheckFailed as e:
                print(f"FAIL {protocol} {checks.current}: {e}", file=sys.stderr, flush=True)
                return 1
            except Exception:
                print(f"FAIL {protocol} {checks.current}: unexpected error", file=sys.stderr)
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
