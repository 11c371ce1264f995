"""``/v1/jobs``: the work of ``/v1/restore``, ``/v1/represent`` and ``/v1/detect`` as jobs that run in the
background, free of the synchronous deadline: submit (``202`` with ``Location``), poll the status, fetch
the result (exactly the synchronous answer), cancel or delete. See docs/SERVICE.md, "Jobs"."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from service.api.deps import AUTH, StateDep
from service.api.jobs import JobRunner
from service.api.routes.detect import DetectQueryDep, detect_work
from service.api.routes.represent import RepresentQueryDep, represent_work
from service.api.routes.restore import RestoreQueryDep, restore_work
from service.api.spec import ERRORS, IMAGE_BODY
from service.api.work import Work, decode, reply_response
from service.deadline import Deadline
from service.errors import ServiceError
from service.job_store import ENDED, JobRecord, now_iso
from service.schemas import ErrorBody, JobStatus

router = APIRouter(tags=["jobs"], dependencies=AUTH)


class JobNotFound(ServiceError):  # noqa: N818 (HTTP-status names, as in httpx)
    """No job with this id (never submitted, deleted, or expired after ``DIR_JOB_TTL_S``)."""

    status = 404
    code = "job_not_found"


class JobNotDone(ServiceError):  # noqa: N818 (HTTP-status names, as in httpx)
    """The job is queued or running: its result is not there yet."""

    status = 409
    code = "job_not_done"
    retry_after = True


class JobCancelled(ServiceError):  # noqa: N818 (HTTP-status names, as in httpx)
    """The job was cancelled: it has no result."""

    status = 410
    code = "job_cancelled"


def get_jobs(request: Request) -> JobRunner:
    """The ``JobRunner`` the lifespan stored on the app."""
    runner: JobRunner = request.app.state.jobs
    return runner


JobsDep = Annotated[JobRunner, Depends(get_jobs)]
SUBMITTED: dict[int | str, dict[str, Any]] = {
    202: {"model": JobStatus, "description": "job accepted"},
    **ERRORS,
}
STATUS_ERRORS: dict[int | str, dict[str, Any]] = {
    401: ERRORS[401],
    404: {"model": ErrorBody, "description": "no such job, or expired"},
}


def status_body(record: JobRecord) -> dict[str, Any]:
    """The JSON status of ``record``."""
    result = f"/v1/jobs/{record.id}/result" if record.state == "done" else None
    return JobStatus.model_validate({**asdict(record), "result": result}).model_dump()


async def _submit(request: Request, jobs: JobRunner, work: Work) -> JSONResponse:
    """Decode and admit the body as the synchronous route would (same 4xx), then start the job."""
    state = work.state
    deadline = Deadline.after(state.settings.request_timeout_s, rule="DIR_REQUEST_TIMEOUT_S (decoding a job)")
    image, decode_s = await decode(request, state, deadline, work.mode, work.json_outputs, scale=False)
    record = await jobs.submit(work, image, decode_s)
    location = f"/v1/jobs/{record.id}"
    return JSONResponse(status_body(record), status_code=202, headers={"Location": location})


@router.post(
    "/v1/jobs/restore",
    summary="Submit /v1/restore's work as a job",
    openapi_extra=IMAGE_BODY,
    status_code=202,
    responses=SUBMITTED,
)
async def restore_job(
    request: Request, state: StateDep, jobs: JobsDep, query: RestoreQueryDep
) -> JSONResponse:
    return await _submit(request, jobs, restore_work(request, state.select(query.model), query))


@router.post(
    "/v1/jobs/represent",
    summary="Submit /v1/represent's work as a job",
    openapi_extra=IMAGE_BODY,
    status_code=202,
    responses=SUBMITTED,
)
async def represent_job(
    request: Request, state: StateDep, jobs: JobsDep, query: RepresentQueryDep
) -> JSONResponse:
    return await _submit(request, jobs, represent_work(state.select(query.model), query))


@router.post(
    "/v1/jobs/detect",
    summary="Submit /v1/detect's work as a job",
    openapi_extra=IMAGE_BODY,
    status_code=202,
    responses=SUBMITTED,
)
async def detect_job(request: Request, state: StateDep, jobs: JobsDep, query: DetectQueryDep) -> JSONResponse:
    return await _submit(request, jobs, await detect_work(state.select(query.model), query))


async def _record(jobs: JobRunner, job_id: str) -> JobRecord:
    record = await jobs.store.get(job_id)
    if record is None:
        raise JobNotFound(f"no job {job_id!r}: never submitted, deleted, or expired (DIR_JOB_TTL_S)")
    return record


@router.get("/v1/jobs/{job_id}", summary="A job's status", response_model=JobStatus, responses=STATUS_ERRORS)
async def job_status(job_id: str, jobs: JobsDep) -> JSONResponse:
    return JSONResponse(status_body(await _record(jobs, job_id)))


@router.get(
    "/v1/jobs/{job_id}/result",
    summary="A done job's result: exactly what the synchronous route answers",
    response_class=Response,
    responses={
        200: {"description": "the synchronous route's answer (its media type and X-* headers)"},
        409: {"model": ErrorBody, "description": "queued or running (Retry-After)"},
        410: {"model": ErrorBody, "description": "cancelled"},
        **STATUS_ERRORS,
    },
)
async def job_result(job_id: str, jobs: JobsDep) -> Response:
    record = await _record(jobs, job_id)
    if record.state == "cancelled":
        raise JobCancelled(f"job {job_id} was cancelled; it has no result")
    if record.state not in ENDED:
        raise JobNotDone(f"job {job_id} is {record.state} ({record.tiles_done}/{record.tiles_total} tiles)")
    reply = await jobs.store.result(job_id)
    if reply is None:
        raise JobNotFound(f"the result of job {job_id} was deleted or has expired (DIR_JOB_TTL_S)")
    return reply_response(reply)


@router.delete(
    "/v1/jobs/{job_id}",
    summary="Cancel a queued or running job (its tiles are dropped) or delete a finished one's result",
    status_code=204,
    response_class=Response,
    responses=STATUS_ERRORS,
)
async def delete_job(job_id: str, jobs: JobsDep) -> Response:
    record = await _record(jobs, job_id)
    if record.state in ENDED:
        await jobs.store.delete(job_id)
    else:
        record.state, record.finished = "cancelled", now_iso()
        await jobs.store.request_cancel(record)
        jobs.cancel(job_id)
    return Response(status_code=204)
