"""Python client for the DiR-ISP service (sync :class:`DirClient`, async :class:`AsyncDirClient`)."""

from service.client.async_client import AsyncDirClient
from service.client.client import DirClient
from service.client.errors import DirClientError, HTTPStatusError, RequestTimeoutError, ServerUnavailableError
from service.client.jobs import DEFAULT_JOB_ABOVE_MP, JobHandle, JobPolling, JobStatus
from service.client.results import Detection, DetectResult, Representation, RestoreResult
from service.client.retry import RetryPolicy

__all__ = [
    "DEFAULT_JOB_ABOVE_MP",
    "AsyncDirClient",
    "DetectResult",
    "Detection",
    "DirClient",
    "DirClientError",
    "HTTPStatusError",
    "JobHandle",
    "JobPolling",
    "JobStatus",
    "Representation",
    "RequestTimeoutError",
    "RestoreResult",
    "RetryPolicy",
    "ServerUnavailableError",
]
