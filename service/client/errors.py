"""The client's one exception hierarchy: every error the client raises is a ``DirClientError``."""

from __future__ import annotations


class DirClientError(Exception):
    """Base class of every error raised by :mod:`service.client`."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ServerUnavailableError(DirClientError):
    """The server could not be reached (connection refused, DNS failure, connect timeout)."""

    def __init__(self, url: str, cause: str) -> None:
        super().__init__(f"cannot reach the DiR server at {url}: {cause}")
        self.url = url


class RequestTimeoutError(DirClientError):
    """The server accepted the connection but did not answer within the client's timeout."""


class HTTPStatusError(DirClientError):
    """The server answered with a non-2xx status; ``server_message`` is the server's own error message and
    ``code`` its error code (``queue_full``, ``job_cancelled``, ...; None when the body had none)."""

    def __init__(
        self, status: int, message: str, retry_after: float | None = None, code: str | None = None
    ) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.server_message = message
        self.retry_after = retry_after
        self.code = code
