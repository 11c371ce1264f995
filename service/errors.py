"""The service's one exception hierarchy; each class carries its HTTP status and a metric reason.

Foreign errors (PIL, ONNX Runtime, Redis) are caught where they arise and re-raised as one of these with a
message naming the offending value; the app maps ``ServiceError`` to a JSON error body at the boundary.
"""

from __future__ import annotations

from typing import ClassVar

from modelstore.errors import ModelStoreError


class ServiceError(Exception):
    """Base class. ``status`` is the HTTP status; ``reason`` labels ``dir_rejected_total`` when set."""

    status: int = 500
    code: str = "internal"
    reason: str | None = None
    retry_after: bool = False
    #: Extra response headers of this error (``WWW-Authenticate`` on 401).
    headers: ClassVar[dict[str, str]] = {}

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadInput(ServiceError):  # noqa: N818 (HTTP-status names, as in httpx)
    """The request is well-formed HTTP but its content cannot be used (truncated image, bad parameter)."""

    status = 422
    code = "bad_input"
    reason = "bad_input"


class UnsupportedMedia(ServiceError):  # noqa: N818 (HTTP-status names, as in httpx)
    """The body is not an image in a supported format (PNG, JPEG, WebP)."""

    status = 415
    code = "unsupported_media_type"
    reason = "bad_input"


class NotAcceptable(ServiceError):  # noqa: N818 (HTTP-status names, as in httpx)
    """The client asked for an output format the endpoint cannot produce."""

    status = 406
    code = "not_acceptable"
    reason = "bad_input"


class TooLarge(ServiceError):  # noqa: N818 (HTTP-status names, as in httpx)
    """Body bytes or pixel count over the configured limit."""

    status = 413
    code = "too_large"
    reason = "too_large"


class Unauthorized(ServiceError):  # noqa: N818 (HTTP-status names, as in httpx)
    """Missing or unknown bearer token while API keys are configured."""

    status = 401
    code = "unauthorized"
    reason = "unauthorized"
    headers: ClassVar[dict[str, str]] = {"WWW-Authenticate": 'Bearer realm="dir-isp"'}


class RequestTimeout(ServiceError):  # noqa: N818 (HTTP-status names, as in httpx)
    """The request body did not arrive within ``DIR_BODY_TIMEOUT_S`` (a slow or stalled client)."""

    status = 408
    code = "request_timeout"
    reason = "body_timeout"


class ModelNotFound(ServiceError):  # noqa: N818 (HTTP-status names, as in httpx)
    """``?model=`` names no entry this service serves."""

    status = 404
    code = "model_not_found"
    reason = "bad_input"


class QueueFull(ServiceError):  # noqa: N818 (HTTP-status names, as in httpx)
    """The model's queue holds ``queue_bound`` tiles already; the client should retry later."""

    status = 429
    code = "queue_full"
    reason = "queue_full"
    retry_after = True


class DeadlineExceeded(ServiceError):  # noqa: N818 (HTTP-status names, as in httpx)
    """The request's deadline passed before all of its tiles were computed."""

    status = 504
    code = "deadline_exceeded"
    reason = "deadline"


class ClientClosed(ServiceError):  # noqa: N818 (HTTP-status names, as in httpx)
    """The client disconnected before its body was read or its response was ready; its remaining work was
    dropped. Nobody reads the answer; the status (nginx's 499) labels logs and metrics."""

    status = 499
    code = "client_closed_request"
    reason = "client_closed"


class Unavailable(ServiceError):  # noqa: N818 (HTTP-status names, as in httpx)
    """A dependency is down (Redis unreachable, model not loaded, no detector installed)."""

    status = 503
    code = "unavailable"
    retry_after = True


class ModelStoreRefused(Unavailable):
    """A :class:`modelstore.errors.ModelStoreError` at the service's boundary: the entry is refused, 503."""

    code = "model_store"

    @classmethod
    def from_store(cls, exc: ModelStoreError) -> ModelStoreRefused:
        """The service's error for a model-store refusal, with its message."""
        return cls(exc.message)


class InferenceError(ServiceError):
    """The runtime failed on a batch (a poison job, a runtime fault): not the client's input."""

    status = 500
    code = "inference_failed"
