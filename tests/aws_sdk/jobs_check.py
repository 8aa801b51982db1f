#!/usr/bin/env python3
"""Jobs of Onramp driven by the AWS IoT Device SDK for Python.

The device side uses the SDK exactly as a device built for AWS IoT Core would:
``awsiot.mqtt5_client_builder.mtls_from_path`` (MQTT 5) or
``awsiot.mqtt_connection_builder.mtls_from_path`` (MQTT 3.1.1) with only the
endpoint, port and CA changed, and either jobs client of the SDK:

- ``awsiot.iotjobs.IotJobsClientV2`` (request-response: it subscribes to
  ``.../get/+``, ``.../update/+`` and correlates on ``clientToken``, with
  streams on ``jobs/notify`` and ``jobs/notify-next``);
- ``awsiot.iotjobs.IotJobsClient`` (the older client: it subscribes to the
  exact ``/accepted`` and ``/rejected`` topics and to the notifications).

The operator side is Onramp's REST API (``POST /api/v1/jobs``,
``GET /api/v1/jobs/<id>``), called with ``urllib``.

For each client and protocol (job ids are distinct per run) the checks are:

a. get pending: nothing in progress, nothing queued;
b. the operator creates a job for the thing over REST; notify-next announces
   it (QUEUED, with its document) and notify lists it;
c. get pending lists it QUEUED; describe ``$next`` returns it with its document;
d. start-next returns it IN_PROGRESS with the given statusDetails;
e. update IN_PROGRESS with new statusDetails and the right expectedVersion;
f. update with a wrong expectedVersion is rejected VersionMismatch with the
   current executionState;
g. update to QUEUED is rejected InvalidStateTransition;
h. update SUCCEEDED with expectedVersion: accepted with the job document;
   notify-next then announces that nothing is pending;
i. describe of the finished job is rejected TerminalStateReached; describe
   ``$next`` has no execution; get pending is empty again;
j. update IN_PROGRESS of the finished job is rejected InvalidStateTransition;
k. update of a job that does not exist is rejected ResourceNotFound;
l. garbage published to ``.../update`` through the SDK's own MQTT client is
   rejected InvalidJson;
m. the REST describe shows the job COMPLETED with executionCounts SUCCEEDED=1.

Every request's ``clientToken`` must come back in its answer. Each passed
check prints ``ok <run> <name>``; the first failure prints ``FAIL ...`` on
stderr and the script exits with status 1. Every wait has a timeout, and a
watchdog ends the script if it ever hangs.

Requires the pinned ``awsiotsdk`` (``pip install -r tests/requirements.txt``).
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import queue
import sys
import threading
import time
import traceback
import uuid
from concurrent.futures import Future
from typing import Any, Callable

import awscrt.mqtt
import awscrt.mqtt5
import awscrt.mqtt_request_response as rr
from awsiot import V2ServiceException, iotjobs, mqtt5_client_builder, mqtt_connection_builder

from sdk_checks import CheckFailed, describe, require  # noqa: E402
from shadow_check import Rest, Stream  # noqa: E402

TIMEOUT = 10.0
WATCHDOG = 300
RECONNECT_SPACING = 1.1
QOS1 = awscrt.mqtt.QoS.AT_LEAST_ONCE


class Answer:
    """An accepted response or a rejection document, as the SDK parsed it."""

    def __init__(self, accepted: Any = None, rejected: Any = None) -> None:
        self.accepted = accepted
        self.rejected = rejected


class Device:
    """A connection made by the SDK's builders, MQTT 5 or MQTT 3.1.1."""

    def __init__(self, args: argparse.Namespace, protocol: str) -> None:
        self.client: awscrt.mqtt5.Client | None = None
        self.connection: awscrt.mqtt.Connection | None = None
        self.stopped = threading.Event()
        if protocol == "5":
            connected: Future = Future()

            def on_success(data: Any) -> None:
                if not connected.done():
                    connected.set_result(data)

            def on_failure(data: Any) -> None:
                if not connected.done():
                    connected.set_exception(CheckFailed(f"MQTT 5 connect failed: {data.exception!r}"))

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
                connected.result(timeout=TIMEOUT)
            except TimeoutError as e:
                raise CheckFailed(f"MQTT 5: not connected within {TIMEOUT:.0f} s") from e
            # The SDK's adapter from an MQTT 5 client to its 3.1.1-style API,
            # as IotJobsClient itself uses it.
            self.raw = self.client.new_connection()
        else:
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
            self.raw = self.connection

    @property
    def protocol_client(self) -> Any:
        return self.client if self.client is not None else self.connection

    def subscribe_raw(self, topic: str) -> queue.Queue:
        """Subscribes with the SDK's MQTT client; returns the payloads' queue."""
        q: queue.Queue = queue.Queue()
        future, _ = self.raw.subscribe(topic, QOS1, callback=lambda topic, payload, **_kw: q.put(payload))
        future.result(timeout=TIMEOUT)
        return q

    def publish_raw(self, topic: str, payload: bytes) -> None:
        future, _ = self.raw.publish(topic, payload, QOS1)
        future.result(timeout=TIMEOUT)

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


class V2Jobs:
    """IotJobsClientV2: requests as futures, notifications as streams."""

    def __init__(self, device: Device, thing: str) -> None:
        options = rr.ClientOptions(
            max_request_response_subscriptions=6,
            max_streaming_subscriptions=4,
            operation_timeout_in_seconds=int(TIMEOUT),
        )
        self.client = iotjobs.IotJobsClientV2(device.protocol_client, options)
        self.next_stream = Stream("notify-next stream")
        self.notify_stream = Stream("notify stream")
        self.next_stream.open(
            self.client.create_next_job_execution_changed_stream(
                iotjobs.NextJobExecutionChangedSubscriptionRequest(thing_name=thing), self.next_stream.options()
            )
        )
        self.notify_stream.open(
            self.client.create_job_executions_changed_stream(
                iotjobs.JobExecutionsChangedSubscriptionRequest(thing_name=thing), self.notify_stream.options()
            )
        )

    def call(self, op: str, request: Any) -> tuple[Answer, str]:
        future = getattr(self.client, op)(request)
        # The V2 client sets the request's clientToken to its correlation token.
        token = request.client_token
        require(isinstance(token, str) and token, f"{op}: the SDK sent no clientToken")
        try:
            return Answer(accepted=future.result(timeout=TIMEOUT + 5)), token
        except TimeoutError as e:
            raise CheckFailed(f"{op}: no answer within {TIMEOUT + 5:.0f} s") from e
        except V2ServiceException as e:
            require(e.modeled_error is not None, f"{op}: failed without a rejection document: {describe(e)}")
            return Answer(rejected=e.modeled_error), token

    def next_event(self, matches: Callable[[Any], bool], what: str) -> Any:
        return self.next_stream.next(matches, what)

    def notify_event(self, matches: Callable[[Any], bool], what: str) -> Any:
        return self.notify_stream.next(matches, what)

    def close(self) -> None:
        self.next_stream.close()
        self.notify_stream.close()


class Events:
    """What one v1 subscription delivered."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.q: queue.Queue = queue.Queue()

    def next(self, matches: Callable[[Any], bool], what: str) -> Any:
        deadline = time.monotonic() + TIMEOUT
        seen = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CheckFailed(f"{self.label}: no {what} within {TIMEOUT:.0f} s (saw {seen})")
            try:
                event = self.q.get(timeout=min(left, 0.2))
            except queue.Empty:
                continue
            if matches(event):
                return event
            seen.append(event)


# v1 operation name -> (subscribe accepted, subscribe rejected, publish,
# subscription request type, whether the subscription names the job).
V1_OPS = {
    "get_pending_job_executions": (
        "subscribe_to_get_pending_job_executions_accepted",
        "subscribe_to_get_pending_job_executions_rejected",
        "publish_get_pending_job_executions",
        iotjobs.GetPendingJobExecutionsSubscriptionRequest,
        False,
    ),
    "start_next_pending_job_execution": (
        "subscribe_to_start_next_pending_job_execution_accepted",
        "subscribe_to_start_next_pending_job_execution_rejected",
        "publish_start_next_pending_job_execution",
        iotjobs.StartNextPendingJobExecutionSubscriptionRequest,
        False,
    ),
    "describe_job_execution": (
        "subscribe_to_describe_job_execution_accepted",
        "subscribe_to_describe_job_execution_rejected",
        "publish_describe_job_execution",
        iotjobs.DescribeJobExecutionSubscriptionRequest,
        True,
    ),
    "update_job_execution": (
        "subscribe_to_update_job_execution_accepted",
        "subscribe_to_update_job_execution_rejected",
        "publish_update_job_execution",
        iotjobs.UpdateJobExecutionSubscriptionRequest,
        True,
    ),
}


class V1Jobs:
    """IotJobsClient: exact /accepted and /rejected subscriptions, then a publish."""

    def __init__(self, device: Device, thing: str) -> None:
        self.thing = thing
        self.client = iotjobs.IotJobsClient(device.protocol_client)
        self.answers: queue.Queue = queue.Queue()
        self.subscribed: set[tuple[str, str]] = set()
        self.next_events = Events("notify-next subscription")
        self.notify_events = Events("notify subscription")
        future, _ = self.client.subscribe_to_next_job_execution_changed_events(
            iotjobs.NextJobExecutionChangedSubscriptionRequest(thing_name=thing), QOS1, self.next_events.q.put
        )
        future.result(timeout=TIMEOUT)
        future, _ = self.client.subscribe_to_job_executions_changed_events(
            iotjobs.JobExecutionsChangedSubscriptionRequest(thing_name=thing), QOS1, self.notify_events.q.put
        )
        future.result(timeout=TIMEOUT)

    def _subscribe(self, op: str, job_id: str | None) -> None:
        key = (op, job_id or "")
        if key in self.subscribed:
            return
        sub_accepted, sub_rejected, _, sub_type, names_job = V1_OPS[op]
        kwargs: dict[str, Any] = {"thing_name": self.thing}
        if names_job:
            kwargs["job_id"] = job_id
        for method, kind in ((sub_accepted, "accepted"), (sub_rejected, "rejected")):
            future, _ = getattr(self.client, method)(
                sub_type(**kwargs), QOS1, lambda response, kind=kind: self.answers.put((kind, response))
            )
            future.result(timeout=TIMEOUT)
        self.subscribed.add(key)

    def call(self, op: str, request: Any) -> tuple[Answer, str]:
        self._subscribe(op, getattr(request, "job_id", None))
        token = str(uuid.uuid4())
        request.client_token = token
        getattr(self.client, V1_OPS[op][2])(request, QOS1).result(timeout=TIMEOUT)
        deadline = time.monotonic() + TIMEOUT
        seen = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CheckFailed(f"{op}: no answer with clientToken {token} within {TIMEOUT:.0f} s (saw {seen})")
            try:
                kind, response = self.answers.get(timeout=min(left, 0.2))
            except queue.Empty:
                continue
            if response.client_token != token:
                seen.append((kind, response))
                continue
            if kind == "accepted":
                return Answer(accepted=response), token
            return Answer(rejected=response), token

    def next_event(self, matches: Callable[[Any], bool], what: str) -> Any:
        return self.next_events.next(matches, what)

    def notify_event(self, matches: Callable[[Any], bool], what: str) -> Any:
        return self.notify_events.next(matches, what)

    def close(self) -> None:
        pass


def accepted(answer_token: tuple[Answer, str], what: str) -> Any:
    answer, token = answer_token
    if answer.rejected is not None:
        r = answer.rejected
        raise CheckFailed(f"{what}: rejected with code {r.code!r}: {r.message!r}")
    response = answer.accepted
    require(
        response.client_token == token,
        f"{what}: accepted with clientToken {response.client_token!r}, expected the request's {token!r}",
    )
    require(response.timestamp is not None, f"{what}: accepted without a timestamp")
    return response


def rejected(answer_token: tuple[Answer, str], code: str, what: str) -> Any:
    answer, token = answer_token
    require(answer.accepted is None, f"{what}: accepted ({answer.accepted}), expected a rejection {code}")
    err = answer.rejected
    require(err.code == code, f"{what}: rejected with code {err.code!r} ({err.message!r}), expected {code}")
    require(
        err.client_token == token,
        f"{what}: rejection clientToken {err.client_token!r}, expected the request's {token!r}",
    )
    require(isinstance(err.message, str) and err.message, f"{what}: rejection message is {err.message!r}")
    require(err.timestamp is not None, f"{what}: rejection without a timestamp")
    return err


class Checks:
    def __init__(self, args: argparse.Namespace, rest: Rest, generation: str, protocol: str) -> None:
        self.args = args
        self.rest = rest
        self.thing = args.thing
        self.generation = generation
        self.protocol = protocol
        self.label = f"{generation}-{'mqtt5' if protocol == '5' else 'mqtt311'}"
        self.job_id = f"{args.job_prefix}{self.label}"
        self.document = {"operation": "upgrade", "url": f"https://example.com/{self.label}.bin", "run": self.label}
        self.current = "connect"
        self.passed = 0
        self.device: Device | None = None
        self.jobs: V1Jobs | V2Jobs | None = None
        self.version = 0

    def ok(self, name: str, detail: str = "") -> None:
        self.passed += 1
        suffix = f" ({detail})" if detail else ""
        print(f"ok {self.label} {name}{suffix}", flush=True)

    def run(self) -> None:
        self.device = Device(self.args, self.protocol)
        self.current = "subscribe"
        if self.generation == "v2":
            self.jobs = V2Jobs(self.device, self.thing)
        else:
            self.jobs = V1Jobs(self.device, self.thing)
        self.ok("connect", f"{self.generation} jobs client over MQTT {'5' if self.protocol == '5' else '3.1.1'}")
        for name, check in [
            ("get_pending_empty", self.check_empty),
            ("rest_create_notifies", self.check_create),
            ("get_pending_lists_queued", self.check_pending),
            ("start_next_in_progress", self.check_start_next),
            ("update_in_progress", self.check_update_progress),
            ("version_mismatch", self.check_version_mismatch),
            ("queued_is_invalid_transition", self.check_queued_refused),
            ("update_succeeded", self.check_succeeded),
            ("terminal_describe", self.check_terminal_describe),
            ("terminal_update_refused", self.check_terminal_update),
            ("unknown_job_not_found", self.check_unknown_job),
            ("garbage_is_invalid_json", self.check_invalid_json),
            ("rest_counts_completed", self.check_rest_counts),
        ]:
            self.current = name
            detail = check()
            self.ok(name, detail or "")

    def cleanup(self) -> None:
        if self.jobs is not None:
            try:
                self.jobs.close()
            except Exception:
                pass
            self.jobs = None
        if self.device is not None:
            self.device.close()
            self.device = None

    def call(self, op: str, request: Any) -> tuple[Answer, str]:
        assert self.jobs
        return self.jobs.call(op, request)

    def update(self, job_id: str, status: str, **kwargs: Any) -> tuple[Answer, str]:
        return self.call(
            "update_job_execution",
            iotjobs.UpdateJobExecutionRequest(thing_name=self.thing, job_id=job_id, status=status, **kwargs),
        )

    # a
    def check_empty(self) -> str:
        got = accepted(
            self.call("get_pending_job_executions", iotjobs.GetPendingJobExecutionsRequest(thing_name=self.thing)),
            "get pending",
        )
        require(not got.in_progress_jobs, f"in progress jobs {got.in_progress_jobs!r}, expected none")
        require(not got.queued_jobs, f"queued jobs {got.queued_jobs!r}, expected none")
        return "no pending executions"

    # b
    def check_create(self) -> str:
        assert self.jobs
        status, body = self.rest.call(
            "POST",
            "/api/v1/jobs",
            {"jobId": self.job_id, "document": self.document, "targets": [self.thing]},
        )
        require(status == 201, f"REST create answered {status}: {body}")
        require(body.get("jobId") == self.job_id, f"REST create answered {body}")
        event = self.jobs.next_event(
            lambda e: e.execution is not None and e.execution.job_id == self.job_id,
            f"notify-next with job {self.job_id}",
        )
        ex = event.execution
        require(ex.status == "QUEUED", f"notify-next status {ex.status!r}, expected QUEUED")
        require(ex.thing_name == self.thing, f"notify-next thingName {ex.thing_name!r}")
        require(ex.job_document == self.document, f"notify-next jobDocument {ex.job_document!r}, expected {self.document}")
        require(ex.execution_number == 1, f"notify-next executionNumber {ex.execution_number!r}")
        require(event.timestamp is not None, "notify-next without a timestamp")
        notify = self.jobs.notify_event(
            lambda e: e.jobs is not None and any(s.job_id == self.job_id for s in e.jobs.get("QUEUED", [])),
            f"notify listing {self.job_id} QUEUED",
        )
        require(not notify.jobs.get("IN_PROGRESS"), f"notify lists IN_PROGRESS {notify.jobs.get('IN_PROGRESS')!r}")
        return f"job {self.job_id}, version {ex.version_number}"

    # c
    def check_pending(self) -> str:
        got = accepted(
            self.call("get_pending_job_executions", iotjobs.GetPendingJobExecutionsRequest(thing_name=self.thing)),
            "get pending",
        )
        require(not got.in_progress_jobs, f"in progress jobs {got.in_progress_jobs!r}, expected none")
        queued = got.queued_jobs or []
        require([s.job_id for s in queued] == [self.job_id], f"queued jobs {[s.job_id for s in queued]}, expected [{self.job_id}]")
        summary = queued[0]
        require(summary.execution_number == 1, f"summary executionNumber {summary.execution_number!r}")
        require(isinstance(summary.version_number, int), f"summary versionNumber {summary.version_number!r}")
        require(summary.queued_at is not None, "summary without queuedAt")
        require(summary.started_at is None, f"a QUEUED summary with startedAt {summary.started_at!r}")
        self.version = summary.version_number
        nxt = accepted(
            self.call(
                "describe_job_execution",
                iotjobs.DescribeJobExecutionRequest(thing_name=self.thing, job_id="$next"),
            ),
            "describe $next",
        )
        ex = nxt.execution
        require(ex is not None and ex.job_id == self.job_id, f"describe $next execution {ex!r}")
        require(ex.status == "QUEUED", f"describe $next status {ex.status!r}")
        require(ex.job_document == self.document, f"describe $next jobDocument {ex.job_document!r}")
        require(ex.version_number == self.version, f"describe $next version {ex.version_number!r}, expected {self.version}")
        return f"QUEUED, version {self.version}"

    # d
    def check_start_next(self) -> str:
        details = {"step": "download"}
        got = accepted(
            self.call(
                "start_next_pending_job_execution",
                iotjobs.StartNextPendingJobExecutionRequest(thing_name=self.thing, status_details=details),
            ),
            "start-next",
        )
        ex = got.execution
        require(ex is not None and ex.job_id == self.job_id, f"start-next execution {ex!r}")
        require(ex.status == "IN_PROGRESS", f"start-next status {ex.status!r}")
        require(ex.status_details == details, f"start-next statusDetails {ex.status_details!r}")
        require(ex.job_document == self.document, f"start-next jobDocument {ex.job_document!r}")
        require(ex.started_at is not None, "start-next without startedAt")
        require(
            isinstance(ex.version_number, int) and ex.version_number > self.version,
            f"start-next versionNumber {ex.version_number!r}, expected more than {self.version}",
        )
        self.version = ex.version_number
        return f"IN_PROGRESS, version {self.version}"

    # e
    def check_update_progress(self) -> str:
        details = {"step": "install", "progress": "50"}
        got = accepted(
            self.update(
                self.job_id,
                "IN_PROGRESS",
                status_details=details,
                expected_version=self.version,
                include_job_execution_state=True,
            ),
            "update IN_PROGRESS",
        )
        st = got.execution_state
        require(st is not None, "update accepted without the executionState asked for")
        require(st.status == "IN_PROGRESS", f"executionState status {st.status!r}")
        require(st.status_details == details, f"executionState statusDetails {st.status_details!r}")
        require(st.version_number == self.version + 1, f"executionState version {st.version_number!r}, expected {self.version + 1}")
        require(got.job_document is None, f"jobDocument {got.job_document!r} although not asked for")
        self.version = st.version_number
        return f"version {self.version}"

    # f
    def check_version_mismatch(self) -> str:
        err = rejected(
            self.update(self.job_id, "IN_PROGRESS", expected_version=self.version + 7),
            "VersionMismatch",
            "update with a wrong expectedVersion",
        )
        st = err.execution_state
        require(st is not None, "VersionMismatch without executionState")
        require(st.status == "IN_PROGRESS", f"VersionMismatch executionState status {st.status!r}")
        require(st.version_number == self.version, f"VersionMismatch executionState version {st.version_number!r}, expected {self.version}")
        return f"current version {st.version_number}"

    # g
    def check_queued_refused(self) -> str:
        err = rejected(self.update(self.job_id, "QUEUED"), "InvalidStateTransition", "update to QUEUED")
        st = err.execution_state
        require(st is not None and st.status == "IN_PROGRESS", f"InvalidStateTransition executionState {st!r}")
        return err.message

    # h
    def check_succeeded(self) -> str:
        assert self.jobs
        details = {"step": "done"}
        got = accepted(
            self.update(
                self.job_id,
                "SUCCEEDED",
                status_details=details,
                expected_version=self.version,
                include_job_document=True,
                include_job_execution_state=True,
            ),
            "update SUCCEEDED",
        )
        st = got.execution_state
        require(st is not None and st.status == "SUCCEEDED", f"executionState {st!r}")
        require(st.version_number == self.version + 1, f"executionState version {st.version_number!r}")
        require(got.job_document == self.document, f"jobDocument {got.job_document!r}, expected {self.document}")
        self.version = st.version_number
        self.jobs.next_event(lambda e: e.execution is None, "notify-next without an execution (nothing pending)")
        return f"version {self.version}"

    # i
    def check_terminal_describe(self) -> str:
        err = rejected(
            self.call(
                "describe_job_execution",
                iotjobs.DescribeJobExecutionRequest(thing_name=self.thing, job_id=self.job_id),
            ),
            "TerminalStateReached",
            "describe of the finished job",
        )
        nxt = accepted(
            self.call(
                "describe_job_execution",
                iotjobs.DescribeJobExecutionRequest(thing_name=self.thing, job_id="$next"),
            ),
            "describe $next",
        )
        require(nxt.execution is None, f"describe $next returned {nxt.execution!r} with nothing pending")
        self.check_empty()
        return err.message

    # j
    def check_terminal_update(self) -> str:
        err = rejected(
            self.update(self.job_id, "IN_PROGRESS"),
            "InvalidStateTransition",
            "update IN_PROGRESS after SUCCEEDED",
        )
        st = err.execution_state
        require(st is not None and st.status == "SUCCEEDED", f"executionState {st!r}")
        require(st.version_number == self.version, f"executionState version {st.version_number!r}, expected {self.version}")
        return err.message

    # k
    def check_unknown_job(self) -> str:
        err = rejected(
            self.update(f"{self.job_id}-missing", "IN_PROGRESS"), "ResourceNotFound", "update of an unknown job"
        )
        return err.message

    # l
    def check_invalid_json(self) -> str:
        assert self.device
        topic = f"$aws/things/{self.thing}/jobs/{self.job_id}/update"
        answers = self.device.subscribe_raw(topic + "/rejected")
        self.device.publish_raw(topic, b"{this is not json")
        try:
            payload = answers.get(timeout=TIMEOUT)
        except queue.Empty as e:
            raise CheckFailed(f"no {topic}/rejected within {TIMEOUT:.0f} s") from e
        body = json.loads(payload)
        require(body.get("code") == "InvalidJson", f"rejection {body}, expected code InvalidJson")
        require(isinstance(body.get("timestamp"), int), f"rejection {body} without an integer timestamp")
        require("clientToken" not in body, f"rejection {body} names a clientToken the request never had")
        return body.get("message", "")

    # m
    def check_rest_counts(self) -> str:
        status, body = self.rest.call("GET", f"/api/v1/jobs/{self.job_id}")
        require(status == 200, f"REST describe answered {status}: {body}")
        require(body.get("status") == "COMPLETED", f"REST job status {body.get('status')!r}, expected COMPLETED")
        counts = body.get("executionCounts")
        require(counts == {"SUCCEEDED": 1}, f"REST executionCounts {counts!r}, expected {{'SUCCEEDED': 1}}")
        return "COMPLETED, SUCCEEDED=1"


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
    p.add_argument("--job-prefix", default="sdk-", help="prefix of the job ids this run creates")
    p.add_argument(
        "--runs",
        default="v2:5,v2:311,v1:5,v1:311",
        help="comma-separated client:protocol runs (client v1 or v2, protocol 5 or 311)",
    )
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    faulthandler.dump_traceback_later(WATCHDOG, exit=True)
    rest = Rest(args.https_url, args.api_key, args.cafile)
    runs = [tuple(r.split(":")) for r in args.runs.split(",")]
    total = 0
    try:
        for i, (generation, protocol) in enumerate(runs):
            if i:
                time.sleep(RECONNECT_SPACING)
            checks = Checks(args, rest, generation, protocol)
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
