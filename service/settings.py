"""Service configuration: one pydantic-settings class, read from ``DIR_*`` environment variables.

Every field is documented in docs/SERVICE.md (settings table); keep the two in step.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL_STORE = Path(__file__).resolve().parent.parent / "model_store"
#: Values of ``DIR_PRECISION``.
PRECISIONS = ("auto", "fp32", "fp16")


class Settings(BaseSettings):
    """Inference service settings (env prefix ``DIR_``, e.g. ``DIR_MAX_BATCH=16``)."""

    model_config = SettingsConfigDict(env_prefix="DIR_", extra="ignore")

    model_store: Path = Field(
        default=DEFAULT_MODEL_STORE, description="root of model_store/<name>/<version>/"
    )
    restore_model: str = Field(
        default="dir-restore", description="restoration entry: 'name' (highest version) or 'name/version'"
    )
    serve_models: str = Field(
        default="",
        description="more restoration entries served beside DIR_RESTORE_MODEL, comma-separated 'name' or "
        "'name/version'; a request picks one with ?model= (embedded queue only)",
    )
    detect_model: str = Field(
        default="",
        description="detector entry 'name' or 'name/version'; empty: the first task=detect entry found",
    )
    queue: str = Field(default="embedded", description="'embedded' (in-process asyncio) or a redis:// URL")
    max_batch: int = Field(default=8, ge=1, description="most tiles in one model call")
    max_queue_delay_ms: float = Field(
        default=5.0, ge=0, description="longest a tile waits for a batch to fill (0 = batching off)"
    )
    queue_bound: int = Field(default=512, ge=1, description="tiles waiting per model; beyond it: 429")
    request_timeout_s: float = Field(
        default=60.0, gt=0, description="base of a synchronous request's deadline; past it: 504"
    )
    request_timeout_per_mp_s: float = Field(
        default=2.0,
        ge=0,
        description="added to a synchronous request's deadline per megapixel of its cost (tile pixels over "
        "all passes of its mode; 0: a fixed deadline)",
    )
    ort_arena_shrink: bool = Field(
        default=True,
        description="after a request or job whose cost reached the heap-trim threshold, shrink ONNX "
        "Runtime's CPU arenas of the API's sessions (one tiny call per session; embedded queue)",
    )
    job_ttl_s: float = Field(
        default=900.0, gt=0, description="a finished job's status and result are kept this long"
    )
    job_timeout_s: float = Field(default=3600.0, gt=0, description="a job running longer fails with 504")
    job_concurrency: int = Field(
        default=1, ge=1, description="jobs one API process runs at once; others wait"
    )
    job_store_bytes: int = Field(
        default=1 << 30,
        gt=0,
        description="bytes one API process holds for jobs (pending jobs' pixels and result estimates, "
        "stored results); a submission beyond it: 503",
    )
    job_poll_s: float = Field(
        default=0.5,
        gt=0,
        description="a running job stores its progress and looks for a cancellation this often",
    )
    max_body_bytes: int = Field(
        default=50 * 1024 * 1024, gt=0, description="largest request body (413 beyond)"
    )
    max_pixels: int = Field(
        default=40_000_000,
        gt=0,
        description="largest width*height accepted, checked before decoding (413 beyond)",
    )
    max_cost_pixels: int = Field(
        default=50_000_000,
        gt=0,
        description="most tile pixels one request may compute (tiles after padding x side^2 x passes of "
        "its mode), checked from the image header before decoding (413 beyond)",
    )
    min_side: int = Field(
        default=1, ge=1, description="shortest image side accepted in pixels, from the header (422 below)"
    )
    max_aspect: float = Field(
        default=32.0,
        ge=1.0,
        description="largest long/short side ratio accepted, from the header (422 beyond)",
    )
    max_json_bytes: int = Field(
        default=16 * 1024 * 1024,
        gt=0,
        description="largest base64 array payload of /v1/represent?format=json (413 beyond: ask for .npy)",
    )
    api_keys: str = Field(
        default="", description="comma-separated bearer tokens; empty: model endpoints are open"
    )
    providers: str = Field(
        default="auto",
        description="comma-separated ONNX Runtime providers; 'auto': CUDA when available, else CPU",
    )
    precision: str = Field(
        default="auto",
        description="restoration graph: 'fp32', 'fp16' (the entry's model.fp16.onnx), or 'auto' (fp16 when "
        "the CUDA provider is used and the entry has one, else fp32)",
    )
    ort_spinning: bool = Field(
        default=True,
        description="ONNX Runtime intra-op threads spin-wait between runs (lower latency, busier cores)",
    )
    ort_cpu_arena: bool = Field(
        default=True,
        description="ONNX Runtime's CPU memory arena for the restoration sessions: it keeps the largest "
        "model call's buffers for the process's life; false returns them after every call (docs/SERVICE.md)",
    )
    warmup: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="run every graph once per tile side at start-up, before serving (API process with the "
        "embedded queue, and each dir-worker): 'on', 'off', or 'auto' = on when the CUDA provider serves. "
        "On a CPU it saves little and keeps every session's memory arena allocated (docs/SERVICE.md)",
    )
    intra_op_threads: int = Field(
        default=0,
        ge=0,
        description="ONNX Runtime intra-op threads of each part of a model call; 0 = the CPU cores divided "
        "among DIR_PARALLEL_RUNS parts",
    )
    parallel_runs: int = Field(
        default=0,
        ge=0,
        description="a model call's tiles run in up to this many parts at once; 0 = one per core, at most "
        "DIR_MAX_BATCH (GPU: 1)",
    )
    restore_mode: Literal["auto", "full", "denoise"] = Field(
        default="auto",
        description="restore mode of /v1/restore and /v1/detect when a request names none: 'full' (DiR, "
        "also corrects the ISP's colour and tone), 'denoise' (keeps them), or 'auto' (denoise when the "
        "entry offers it, else full)",
    )
    host: str = Field(default="127.0.0.1", description="dir-serve bind address")
    port: int = Field(default=8000, ge=0, le=65535, description="dir-serve port")
    tile_size: int = Field(default=0, ge=0, description="tile side in pixels; 0 = the manifest's tile.size")
    tile_sizes: str = Field(
        default="",
        description="comma-separated tile sides to pick from per image (the fewest pixels computed, ties to "
        "the larger); empty = the tile side and twice it. DIR_MAX_BATCH tiles of the tile side bound the "
        "pixels of a model call",
    )
    tile_overlap: int = Field(default=-1, ge=-1, description="tile overlap (px); -1 = manifest tile.overlap")
    stream_prefix: str = Field(
        default="dir", description="prefix of every Redis key and stream the service uses"
    )
    priority_tiles: int = Field(
        default=16,
        ge=0,
        description="Redis mode: a pass of at most this many tiles goes to its lane's priority stream, which "
        "workers read first, so small requests overtake a costly request's backlog (0 = one stream, FIFO)",
    )
    result_ttl_s: int = Field(default=120, ge=1, description="TTL of per-request result keys in Redis")
    claim_idle_ms: int = Field(
        default=30_000,
        ge=1,
        description="pending Redis job of a live (heartbeating) but stuck worker, idle this long, is "
        "reclaimed (XAUTOCLAIM); a dead worker's jobs are claimed as soon as its heartbeat expires",
    )
    heartbeat_ttl_ms: int = Field(
        default=2_000,
        ge=100,
        description="TTL of a dir-worker's heartbeat key, refreshed four times per TTL: a worker is live "
        "(counted by /readyz) while the key exists; once it expires, other workers claim its pending jobs",
    )
    max_deliveries: int = Field(
        default=3, ge=1, description="deliveries of one Redis job before it is dead-lettered"
    )
    retry_after_s: int = Field(default=1, ge=0, description="Retry-After seconds sent with 429/503")
    ops_open: bool = Field(
        default=False,
        description="serve /metrics and the /readyz checks without the API key even when DIR_API_KEYS is set "
        "(/healthz and the /readyz verdict are always open)",
    )
    max_connections: int = Field(
        default=256,
        ge=0,
        description="open HTTP connections dir-serve accepts requests on; beyond it: 503 (0 = no limit)",
    )
    header_timeout_s: float = Field(
        default=10.0, gt=0, description="a connection whose request line and headers take longer is closed"
    )
    body_timeout_s: float = Field(
        default=60.0, gt=0, description="the whole request body must arrive within this; past it: 408"
    )
    keep_alive_s: int = Field(
        default=5, ge=1, description="an idle keep-alive connection is closed after this many seconds"
    )
    pinned_digests: str = Field(
        default="",
        description="comma-separated name/version=sha256 of each entry's manifest.json; when set, only "
        "entries listed with that digest load",
    )
    detector_rescan_s: float = Field(
        default=2.0,
        gt=0,
        description="while no detector is loaded, /v1/detect looks for one in the store at most this often",
    )

    @field_validator("queue")
    @classmethod
    def _queue_kind(cls, value: str) -> str:
        if value != "embedded" and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"DIR_QUEUE must be 'embedded' or a redis:// URL, got {value!r}")
        return value

    @field_validator("tile_sizes")
    @classmethod
    def _tile_sides(cls, value: str) -> str:
        for part in value.split(","):
            if part.strip() and (not part.strip().isdigit() or int(part) <= 0):
                raise ValueError(f"DIR_TILE_SIZES must be positive integers, comma-separated; got {value!r}")
        return value

    @field_validator("pinned_digests")
    @classmethod
    def _pins(cls, value: str) -> str:
        for part in value.split(","):
            ref, equals, digest = part.strip().partition("=")
            if part.strip() and (
                not equals or "/" not in ref or not re.fullmatch(r"[0-9a-fA-F]{64}", digest.strip())
            ):
                raise ValueError(
                    "DIR_PINNED_DIGESTS must be comma-separated name/version=<sha256 hex>, "
                    f"got {part.strip()!r}"
                )
        return value

    @field_validator("precision")
    @classmethod
    def _precision_kind(cls, value: str) -> str:
        if value not in PRECISIONS:
            raise ValueError(f"DIR_PRECISION must be one of {PRECISIONS}, got {value!r}")
        return value

    @property
    def api_key_set(self) -> frozenset[str]:
        """The configured bearer tokens (empty set: no authentication)."""
        return frozenset(k.strip() for k in self.api_keys.split(",") if k.strip())

    def tile_geometry(self, manifest_size: int, manifest_overlap: int) -> tuple[int, tuple[int, ...], int]:
        """``(base side, sides to choose from per image, overlap)`` in pixels: the base is DIR_TILE_SIZE or
        else ``manifest_size``; the sides DIR_TILE_SIZES or else the base and twice it; the overlap
        DIR_TILE_OVERLAP or else ``manifest_overlap``."""
        base = self.tile_size or manifest_size
        listed = tuple(sorted({int(p) for p in self.tile_sizes.split(",") if p.strip()}))
        overlap = self.tile_overlap if self.tile_overlap >= 0 else manifest_overlap
        return base, listed or (base, 2 * base), overlap

    @property
    def pins(self) -> dict[str, str]:
        """``DIR_PINNED_DIGESTS`` as ``{"name/version": sha256 of its manifest.json}`` (empty: no pins)."""
        pairs = (p.strip().partition("=") for p in self.pinned_digests.split(",") if p.strip())
        return {ref.strip(): digest.strip().lower() for ref, _, digest in pairs}

    @property
    def provider_list(self) -> list[str] | None:
        """Explicit ONNX Runtime providers, or None for automatic choice."""
        if self.providers.strip() in ("", "auto"):
            return None
        return [p.strip() for p in self.providers.split(",") if p.strip()]

    @property
    def served_models(self) -> list[str]:
        """The entries of ``DIR_SERVE_MODELS`` (``name`` or ``name/version``), in order."""
        return [ref.strip() for ref in self.serve_models.split(",") if ref.strip()]

    @property
    def cores(self) -> int:
        """The CPUs this process may run on."""
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

    @property
    def threads(self) -> int:
        """ONNX Runtime intra-op threads of a session that runs one call at a time (the detector): the
        setting, else every core."""
        return self.intra_op_threads or self.cores

    def parallel(self, gpu: bool) -> int:
        """Parts a restoration model call is split into, run at once: the setting, else one per core but no
        more than ``max_batch`` (a call never holds more tiles; with batching off a tile keeps every core),
        and 1 on a GPU."""
        return self.parallel_runs or (1 if gpu else min(self.cores, self.max_batch))

    def warms_up(self, gpu: bool) -> bool:
        """Whether to run the start-up pass (``DIR_WARMUP``): ``on``, or ``auto`` on a GPU."""
        return self.warmup == "on" or (self.warmup == "auto" and gpu)

    def run_threads(self, parallel: int) -> int:
        """Intra-op threads of each of ``parallel`` parts run at once: the setting, else an equal share of the
        cores (at least 1)."""
        return self.intra_op_threads or max(1, self.cores // parallel)

    @property
    def uses_redis(self) -> bool:
        """True when the Redis Streams backend is configured."""
        return self.queue != "embedded"
