"""What the AWS IoT Device SDK check scripts share: failing a check, and
waiting for an SDK request's answer with a readable account of its error."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

from awsiot import V2ServiceException

TIMEOUT = 10.0

# Fields of the SDK's modeled errors: shadow/jobs (code, message,
# client_token) and identity (status_code, error_code, error_message).
ERROR_FIELDS = ("code", "message", "client_token", "status_code", "error_code", "error_message")


class CheckFailed(Exception):
    pass


def require(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def describe(e: BaseException) -> str:
    """A readable account of an SDK failure, with the modeled error if any."""
    if isinstance(e, V2ServiceException):
        parts = [e.message]
        if e.modeled_error is not None:
            me = e.modeled_error
            fields = [f"{f}={getattr(me, f)!r}" for f in ERROR_FIELDS if getattr(me, f, None) is not None]
            parts.append("modeled error: " + " ".join(fields))
        if e.inner_error is not None:
            parts.append(f"cause: {type(e.inner_error).__name__}: {e.inner_error}")
        return "; ".join(parts)
    return f"{type(e).__name__}: {e}"


def wait_result(future: Future, what: str) -> Any:
    try:
        return future.result(timeout=TIMEOUT + 5)
    except TimeoutError as e:
        raise CheckFailed(f"{what}: no answer within {TIMEOUT + 5:.0f} s") from e
    except V2ServiceException as e:
        raise CheckFailed(f"{what} failed: {describe(e)}") from e


def wait_rejected(future: Future, what: str) -> Any:
    """Waits for a request that must be rejected; returns the modeled error."""
    try:
        result = future.result(timeout=TIMEOUT + 5)
    except TimeoutError as e:
        raise CheckFailed(f"{what}: no answer within {TIMEOUT + 5:.0f} s") from e
    except V2ServiceException as e:
        require(
            e.modeled_error is not None,
            f"{what}: failed without a rejection document from the server: {describe(e)}",
        )
        return e.modeled_error
    raise CheckFailed(f"{what}: accepted ({result}), expected a rejection")
