"""Python client for the DiR-ISP service (sync :class:`DirClient`, async :class:`AsyncDirClient`)."""

from service.client.client import AsyncDirClient, DirClient
from service.client.errors import DirClientError, HTTPStatusError, RequestTimeoutError, ServerUnavailableError
from service.client.results import Detection, DetectResult, Representation, RestoreResult
from service.client.retry import RetryPolicy

__all__ = [
    "AsyncDirClient",
    "DetectResult",
    "Detection",
    "DirClient",
    "DirClientError",
    "HTTPStatusError",
    "Representation",
    "RequestTimeoutError",
    "RestoreResult",
    "RetryPolicy",
    "ServerUnavailableError",
]
