"""Run methods over a protocol's samples and collect per-image scores, timings and figure crops."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from statistics import fmean

import numpy as np
import torch
from tqdm import tqdm

from training.evaluate.errors import EvaluationError, MethodUnavailableError
from training.evaluate.methods import MethodContext, MethodSpec
from training.evaluate.methods.base import BoundMethod
from training.evaluate.metrics import psnr, ssim
from training.evaluate.protocols import Sample, get_protocol
from training.isp.jpeg import to_uint8

NoReferenceScore = Callable[[torch.Tensor], float]
"""(1, 3, H, W) sRGB [0, 1] -> a no-reference quality score (lower is better)."""

FIGURE_CROP = 160
CACHE_VERSION = 2
"""Bump when a cached method's code changes so its old scores are not reused."""
CACHED_FAMILIES = ("reference", "peer")


@dataclass(frozen=True)
class ImageScore:
    """One method on one image: PSNR (dB) / SSIM where a reference exists, a no-reference score where one
    is computed, wall-clock seconds of the restore call and the image size in megapixels."""

    dataset: str
    name: str
    psnr: float | None
    ssim: float | None
    nr: float | None
    seconds: float
    megapixels: float


@dataclass(frozen=True)
class Summary:
    """Means over the images of one dataset; ``s_per_mp`` = total seconds / total megapixels."""

    n: int
    psnr: float | None
    ssim: float | None
    nr: float | None
    s_per_mp: float


@dataclass
class MethodResult:
    """All scores of one method; ``reason`` says why a method did not run (then ``scores`` is empty)."""

    method: str
    label: str
    family: str
    description: str
    table5: tuple[bool, bool, bool] | None
    reason: str | None = None
    version: str | None = None
    scores: list[ImageScore] = field(default_factory=list)

    def summary(self, dataset: str) -> Summary | None:
        """Means over ``dataset``'s images, or None where the method has no scores there."""
        rows = [s for s in self.scores if s.dataset == dataset]
        if not rows:
            return None

        def mean(values: list[float | None]) -> float | None:
            kept = [v for v in values if v is not None]
            return fmean(kept) if kept else None

        mp = sum(r.megapixels for r in rows)
        return Summary(
            n=len(rows),
            psnr=mean([r.psnr for r in rows]),
            ssim=mean([r.ssim for r in rows]),
            nr=mean([r.nr for r in rows]),
            s_per_mp=sum(r.seconds for r in rows) / mp,
        )


@dataclass
class RunResult:
    """One protocol run: what ran, where, and every method's scores. ``crops``: per dataset, the label ->
    (h, w, 3) uint8 sRGB crop of the first image, for the figure."""

    protocol: str
    description: str
    paper_table: str
    datasets: list[str]
    limit: int | None
    machine: str
    started: str
    methods: list[MethodResult]
    nr_name: str | None = None
    crops: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        """A JSON-serialisable dict (crops left out)."""
        out = asdict(self)
        out.pop("crops")
        out["summaries"] = {
            m.method: {ds: (asdict(s) if (s := m.summary(ds)) else None) for ds in self.datasets}
            for m in self.methods
        }
        return out


class ScoreCache:
    """Per-image scores of the deterministic methods (identity, the peers, and checkpoint / ONNX methods by
    the sha256 of their weights), kept on disk as JSON lines so that a later run reuses them.

    The key holds the method (and weights hash), the sha1 of the exact degraded input tensor (so a change of
    the ISP simulator invalidates it), the dataset, image name, no-reference score name and
    :data:`CACHE_VERSION`. Timings
    are cached with the scores: they are those of the run that computed them.
    """

    def __init__(self, folder: Path) -> None:
        self.path = folder / "scores.jsonl"
        self.entries: dict[str, ImageScore] = {}
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                row = json.loads(line)
                self.entries[row["key"]] = ImageScore(**row["score"])

    @staticmethod
    def key(method: str, sample: Sample, nr_name: str | None, fingerprint: str | None = None) -> str:
        """The cache key of one method (with its weights' sha256 where it has weights) on one sample."""
        digest = hashlib.sha1(sample.degraded.numpy().tobytes()).hexdigest()
        weights = f"@{fingerprint}" if fingerprint else ""
        return f"v{CACHE_VERSION}/{method}{weights}/{sample.dataset}/{sample.name}/{digest}/{nr_name}"

    def get(self, key: str) -> ImageScore | None:
        """The cached score, or None."""
        return self.entries.get(key)

    def put(self, key: str, score: ImageScore) -> None:
        """Record a score (appended to the file at once)."""
        self.entries[key] = score
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as fh:
            fh.write(json.dumps({"key": key, "score": asdict(score)}) + "\n")


def machine_description() -> str:
    """CPU model, logical cores and torch threads of this machine, in words."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            names = [ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")]
        model = names[0] if names else model
    except OSError:
        pass
    return (
        f"{model}, {os.cpu_count()} logical cores (shared), torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads, {platform.system()} {platform.release()}"
    )


def _crop_box(sample: Sample) -> tuple[slice, slice]:
    h, w = sample.degraded.shape[-2:]
    size = min(FIGURE_CROP, h, w)
    top, left = (h - size) // 2, (w - size) // 2
    return slice(top, top + size), slice(left, left + size)


def _score_sample(
    mspec: MethodSpec,
    restore: BoundMethod,
    sample: Sample,
    nr_score: tuple[str, NoReferenceScore] | None,
    cache: ScoreCache | None,
    recompute: bool,
) -> tuple[ImageScore, torch.Tensor | None]:
    """One method's score on one sample, and its (1, 3, H, W) sRGB [0, 1] output where it was run.

    Deterministic methods are read from / written to ``cache``; ``recompute`` runs the method even when
    cached (the first image of each dataset, whose output the figure crops); its fresh score is returned.
    """
    nr_name = nr_score[0] if nr_score else None
    cacheable = mspec.family in CACHED_FAMILIES or restore.fingerprint is not None
    key = ScoreCache.key(mspec.name, sample, nr_name, restore.fingerprint) if cache and cacheable else None
    cached = cache.get(key) if cache and key else None
    if cached is not None and not recompute:
        return cached, None
    start = time.perf_counter()
    out = restore(sample.degraded, sample.clean)
    seconds = time.perf_counter() - start
    if out.shape != sample.degraded.shape:
        shapes = f"{tuple(out.shape)} for input {tuple(sample.degraded.shape)}"
        raise EvaluationError(f"method {mspec.name} returned shape {shapes}")
    p = s = None
    if sample.clean is not None:
        p, s = psnr(out, sample.clean)[0], ssim(out, sample.clean)[0]
    nr = nr_score[1](out) if nr_score is not None else None
    score = ImageScore(sample.dataset, sample.name, p, s, nr, seconds, sample.megapixels)
    if cache and key and cached is None:
        cache.put(key, score)
    return score, out


def run_protocol(
    protocol: str,
    methods: Sequence[MethodSpec],
    ctx: MethodContext,
    datasets: Sequence[str] | None = None,
    limit: int | None = None,
    nr_score: tuple[str, NoReferenceScore] | None = None,
    progress: bool = True,
    cache: ScoreCache | None = None,
    skip: Sequence[str] = (),
) -> RunResult:
    """Score every method on the protocol's samples (the same degraded tensors for all methods).

    ``limit``: at most this many images per dataset (the first ones, sorted by file name). ``nr_score``:
    (name, function) of a no-reference score computed on every output.
    A method that cannot be built is recorded with its reason and skipped. ``cache``: reuse / record the
    scores of the deterministic methods (the first image of each dataset is always recomputed for the
    figure). ``skip``: method names recorded as not run (e.g. BM3D where the CPU budget does not allow it).
    """
    spec = get_protocol(protocol)
    names = list(datasets) if datasets else list(spec.default_datasets)
    samples = [s for ds in names for s in spec.samples(ds, limit)]
    run = RunResult(
        protocol=protocol,
        description=spec.description,
        paper_table=spec.paper_table,
        datasets=names,
        limit=limit,
        machine=machine_description(),
        started=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        methods=[],
        nr_name=nr_score[0] if nr_score else None,
    )
    first = {ds: next(s for s in samples if s.dataset == ds) for ds in names}
    for ds, sample in first.items():
        box = _crop_box(sample)
        run.crops[ds] = {"Degraded": to_uint8(sample.degraded[0, :, box[0], box[1]])}
        if sample.clean is not None:
            run.crops[ds] = {"Clean": to_uint8(sample.clean[0, :, box[0], box[1]]), **run.crops[ds]}
    for mspec in methods:
        result = MethodResult(mspec.name, mspec.label, mspec.family, mspec.description, mspec.table5)
        run.methods.append(result)
        if mspec.name in skip:
            result.reason = "skipped in this run (--skip; see the notes at the top)"
            continue
        try:
            restore = mspec.bind(ctx)
        except MethodUnavailableError as exc:
            result.reason = str(exc)
            continue
        result.version = restore.version
        usable = [s for s in samples if s.clean is not None] if mspec.oracle else samples
        for sample in tqdm(usable, desc=f"{protocol}:{mspec.name}", unit="img", disable=not progress):
            is_first = sample is first[sample.dataset]
            score, out = _score_sample(mspec, restore, sample, nr_score, cache, recompute=is_first)
            result.scores.append(score)
            if out is not None and is_first and mspec.family != "reference":
                rows, cols = _crop_box(sample)
                run.crops[sample.dataset][mspec.label] = to_uint8(out[0, :, rows, cols])
    return run
