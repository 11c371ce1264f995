"""A stand-in DiR server implementing the jobs API contract (docs/SERVICE.md) for the client tests.

Its model is trivial and deterministic (restore inverts the image, represent is the per-channel mean on a
4x-downscaled grid, detect finds one box over the whole image), so a job's result can be compared byte for
byte with the synchronous route's. Each status GET of a job moves it on: queued -> running, then ``step``
tiles per GET until ``tiles`` are done (or it fails with ``fail``). Every request is logged as
``"METHOD /path"``.
"""

from __future__ import annotations

import io
import itertools
import json
import math
from collections.abc import Awaitable, Callable

import numpy as np
from fastapi import FastAPI, Request, Response
from PIL import Image, UnidentifiedImageError

MODEL = "fake-restore/1"


def image_bytes(width: int, height: int, fmt: str = "PNG") -> bytes:
    """An RGB gradient image of ``width`` x ``height`` encoded as ``fmt``."""
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
    pixels = np.concatenate([x + 0 * y, y + 0 * x, (x + y) / 2], axis=2).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps({"error": code, "message": message})
    return Response(body, status, headers, media_type="application/json")


def answer(task: str, body: bytes, params: dict[str, str]) -> Response:
    """What the synchronous route ``/v1/{task}`` answers for ``body`` with query ``params``."""
    try:
        image = Image.open(io.BytesIO(body)).convert("RGB")
    except (UnidentifiedImageError, OSError):
        return _error(415, "unsupported_media_type", "body is not a PNG, JPEG or WebP image")
    headers = {"X-Model": MODEL, "Server-Timing": "compute;dur=5"}
    width, height = image.size
    if task == "restore":
        out = io.BytesIO()
        fmt = "JPEG" if params.get("format") == "jpeg" else "PNG"
        Image.fromarray(255 - np.asarray(image)).save(out, format=fmt)
        return Response(out.getvalue(), 200, headers, media_type=f"image/{fmt.lower()}")
    if task == "represent":
        grid = (3, math.ceil(height / 4), math.ceil(width / 4))
        means = np.asarray(image, dtype=np.float32).mean(axis=(0, 1)) / 255.0
        out = io.BytesIO()
        np.save(out, np.broadcast_to(means[:, None, None], grid).astype(np.float32))
        return Response(out.getvalue(), 200, headers, media_type="application/octet-stream")
    box = {"class_id": 0, "class_name": "person", "score": 0.9, "box": [0.0, 0.0, width, height]}
    result = {
        "model": MODEL,
        "restore_mode": params.get("mode", "full"),
        "detector": "box/1",
        "width": width,
        "height": height,
        "detections": [box],
        "input_detections": [box] if params.get("compare") == "true" else None,
        "timings_ms": {"compute": 5.0},
    }
    return Response(json.dumps(result), 200, media_type="application/json")


class FakeJobServer:
    """The sync routes and ``/v1/jobs`` of the contract; ``retry_after``: the ``Retry-After`` of each job
    status answer, the submission's included (None: none); ``fail``: (status, error code) every job ends
    with instead of its result."""

    def __init__(
        self,
        tiles: int = 4,
        step: int = 2,
        retry_after: str | None = "0",
        fail: tuple[int, str] | None = None,
    ) -> None:
        self.tiles, self.step, self.retry_after, self.fail = tiles, step, retry_after, fail
        self.jobs: dict[str, dict[str, object]] = {}
        self.log: list[str] = []
        self._ids = itertools.count(1)
        self.app = FastAPI()
        self.app.middleware("http")(self._record)
        self.app.add_api_route("/healthz", self.healthz, methods=["GET"])
        self.app.add_api_route("/v1/jobs/{task}", self.submit, methods=["POST"])
        self.app.add_api_route("/v1/jobs/{job_id}", self.status, methods=["GET"])
        self.app.add_api_route("/v1/jobs/{job_id}/result", self.result, methods=["GET"])
        self.app.add_api_route("/v1/jobs/{job_id}", self.delete, methods=["DELETE"])
        self.app.add_api_route("/v1/{task}", self.sync, methods=["POST"])

    async def _record(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if request.url.path != "/healthz":
            self.log.append(f"{request.method} {request.url.path}")
        return await call_next(request)

    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    async def sync(self, task: str, request: Request) -> Response:
        return answer(task, await request.body(), dict(request.query_params))

    def _status(self, job: dict[str, object]) -> dict[str, object]:
        done = job["state"] == "done"
        return {
            **{k: job[k] for k in ("id", "task", "state", "tiles_done", "tiles_total", "image_size")},
            **{"created": "2026-12-04T21:00:00Z", "started": None, "finished": None, "expires": None},
            "timings": None,
            "error": job["error"],
            "result": f"/v1/jobs/{job['id']}/result" if done else None,
        }

    async def submit(self, task: str, request: Request) -> Response:
        body, params = await request.body(), dict(request.query_params)
        refused = answer(task, body, params)
        if refused.status_code != 200:
            return refused
        job_id = f"job{next(self._ids)}"
        width, height = Image.open(io.BytesIO(body)).size
        job: dict[str, object] = {"id": job_id, "task": task, "state": "queued", "tiles_done": 0}
        job |= {"tiles_total": self.tiles, "image_size": f"{width}x{height}", "error": None}
        job |= {"body": body, "params": params}
        self.jobs[job_id] = job
        headers = {"Location": f"/v1/jobs/{job_id}", **self._retry_after()}
        return Response(json.dumps(self._status(job)), 202, headers, media_type="application/json")

    def _retry_after(self) -> dict[str, str]:
        return {} if self.retry_after is None else {"Retry-After": self.retry_after}

    async def status(self, job_id: str) -> Response:
        job = self.jobs.get(job_id)
        if job is None:
            return _error(404, "job_not_found", f"no job {job_id}")
        if job["state"] == "queued":
            job["state"] = "running"
        elif job["state"] == "running":
            job["tiles_done"] = min(self.tiles, int(str(job["tiles_done"])) + self.step)
            if job["tiles_done"] == self.tiles:
                job["state"] = "done" if self.fail is None else "failed"
                if self.fail is not None:
                    job["error"] = {"code": self.fail[1], "message": f"job failed: {self.fail[1]}"}
        return Response(
            json.dumps(self._status(job)), 200, self._retry_after(), media_type="application/json"
        )

    async def result(self, job_id: str) -> Response:
        job = self.jobs.get(job_id)
        if job is None:
            return _error(404, "job_not_found", f"no job {job_id}")
        if job["state"] == "cancelled":
            return _error(410, "job_cancelled", f"job {job_id} was cancelled")
        if job["state"] == "failed" and self.fail is not None:
            return _error(self.fail[0], self.fail[1], f"job failed: {self.fail[1]}")
        if job["state"] != "done":
            return _error(409, "job_not_done", f"job {job_id} is {job['state']}", {"Retry-After": "1"})
        body, params = job["body"], job["params"]
        assert isinstance(body, bytes) and isinstance(params, dict)
        return answer(str(job["task"]), body, params)

    async def delete(self, job_id: str) -> Response:
        job = self.jobs.get(job_id)
        if job is None:
            return _error(404, "job_not_found", f"no job {job_id}")
        if job["state"] in ("queued", "running"):
            job["state"] = "cancelled"
        else:
            del self.jobs[job_id]
        return Response(status_code=204)
