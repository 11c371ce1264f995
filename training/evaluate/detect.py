"""The ``detect`` protocol: detector mAP on clean, ISP-degraded and restored coco128_val images.

Each image (H, W, 3) uint8 RGB is cropped to even H, W, degraded by the ISP preset ``default-isp`` (the
paper's "default params ISP" baseline of Table 2) at a seed fixed by the image content, optionally restored
by a method, and re-quantised to uint8 before the detector sees it. mAP is computed by
``training.detect.coco_map.evaluate_detector`` (pycocotools' COCOeval: 101-point AP at IoU 0.5 and 0.5:0.95).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from modelstore.detector import Detector, find_detector, load_detector
from modelstore.errors import ModelStoreError
from training.detect.coco_map import coco128_dirs, evaluate_detector
from training.evaluate.errors import DatasetMissingError, MethodUnavailableError, ProtocolError
from training.evaluate.methods import MethodContext, MethodSpec
from training.evaluate.runner import CACHE_VERSION, CACHED_FAMILIES, machine_description
from training.isp import simulate, stable_seed

DETECT_PRESET = "default-isp"
DETECT_DATASET = "coco128_val"
DETECT_PRESETS = ("default-isp", "lowlight")
PRESET_TEXT = {
    "default-isp": (
        "coco128_val through the synthetic ISP preset 'default-isp' (untuned default ISP: fixed gains, "
        "mean colour matrix, bilinear demosaic, sensor noise, JPEG 90); the detector scores clean, degraded "
        "and restored images"
    ),
    "lowlight": (
        "coco128_val through the synthetic ISP preset 'lowlight' (paper Table 4: dim exposure, strong sensor "
        "noise); the detector scores clean, degraded and restored images"
    ),
}
PAPER_TABLE2 = {"degraded": (34.1, 21.4), "restored": (63.9, 43.3)}
"""Paper Table 2 (YOLOv3 on MS COCO): mAP@0.5 and mAP@0.5:0.95 (%) for the default-params ISP and DiR."""


@dataclass(frozen=True)
class DetectRow:
    """One detector input condition: mAP (fractions in [0, 1]), restore seconds per megapixel."""

    condition: str
    method: str | None
    map50: float | None
    map50_95: float | None
    s_per_mp: float | None
    reason: str | None = None
    version: str | None = None


@dataclass
class DetectRun:
    """The ``detect`` protocol's result."""

    detector: str
    n_images: int
    n_boxes: int
    limit: int | None
    machine: str
    started: str
    rows: list[DetectRow] = field(default_factory=list)
    protocol: str = "detect"
    preset: str = DETECT_PRESET
    description: str = ""

    def __post_init__(self) -> None:
        if not self.description:
            self.description = PRESET_TEXT.get(
                self.preset, f"coco128_val through the ISP preset '{self.preset}'"
            )

    def to_json(self) -> dict[str, object]:
        """A JSON-serialisable dict."""
        return asdict(self)


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    h, w = image.shape[:2]
    rgb = image[: h - h % 2, : w - w % 2].astype(np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).unsqueeze(0)


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return (x[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8)


def degrade_for_detection(
    image: np.ndarray, preset: str = DETECT_PRESET
) -> tuple[torch.Tensor, torch.Tensor]:
    """(H, W, 3) uint8 RGB -> (clean, degraded by ISP ``preset``), each (1, 3, H', W') float32 [0, 1] with H',
    W' even.

    The seed is ``stable_seed(preset, "coco128_val", <sha256 of the pixels, 16 hex>)``.
    """
    clean = _to_tensor(image)
    key = hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()[:16]
    with torch.no_grad():
        degraded = simulate(clean, preset=preset, seed=stable_seed(preset, DETECT_DATASET, key))
    return clean, degraded.degraded.float().clamp(0, 1)


@dataclass
class _Timer:
    seconds: float = 0.0
    megapixels: float = 0.0

    @property
    def s_per_mp(self) -> float | None:
        return self.seconds / self.megapixels if self.megapixels else None


class DegradedCache:
    """Degraded images by content key, kept as uint8 (the ISP output is 8-bit JPEG, so this is lossless)
    so that every method of one run restores the very same inputs without re-running the simulator."""

    def __init__(self, preset: str = DETECT_PRESET) -> None:
        self.preset = preset
        self.items: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def get(self, image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(clean, degraded) tensors (1, 3, H', W') [0, 1] of one uint8 RGB image."""
        key = hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()
        if key not in self.items:
            clean, degraded = degrade_for_detection(image, self.preset)
            self.items[key] = (_to_uint8(clean), _to_uint8(degraded))
        clean_u8, degraded_u8 = self.items[key]
        return _to_tensor(clean_u8), _to_tensor(degraded_u8)

    def fill(self, images_dir: Path) -> str:
        """Degrade every image of ``images_dir`` (sorted) once; returns the sha1 of all degraded bytes."""
        h = hashlib.sha1()
        for path in sorted(p for p in images_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")):
            with Image.open(path) as im:
                image = np.asarray(im.convert("RGB"))
            h.update(_to_uint8(self.get(image)[1]).tobytes())
        return h.hexdigest()


class RowCache:
    """Detect rows of the deterministic methods on disk (``<folder>/detect.jsonl``), see ScoreCache."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "detect.jsonl"
        self.entries: dict[str, DetectRow] = {}
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                item = json.loads(line)
                self.entries[item["key"]] = DetectRow(**item["row"])

    def get(self, key: str) -> DetectRow | None:
        """The cached row, or None."""
        return self.entries.get(key)

    def put(self, key: str, row: DetectRow) -> None:
        """Record a row (appended to the file at once)."""
        self.entries[key] = row
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as fh:
            fh.write(json.dumps({"key": key, "row": asdict(row)}) + "\n")


def _restoring_transform(
    restore: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
    timer: _Timer,
    bar: tqdm,
    degraded_cache: DegradedCache,
) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 RGB -> degrade (cached) -> restore (timed) -> uint8 RGB, ticking ``bar`` once per image."""

    def transform(image: np.ndarray) -> np.ndarray:
        clean, degraded = degraded_cache.get(image)
        start = time.perf_counter()
        out = restore(degraded, clean)
        timer.seconds += time.perf_counter() - start
        timer.megapixels += degraded.shape[-2] * degraded.shape[-1] / 1e6
        bar.update(1)
        return _to_uint8(out)

    return transform


def _subset(images: Path, labels: Path, limit: int, tmp: Path) -> tuple[Path, Path]:
    """Symlink the first ``limit`` images (sorted) and their labels into ``tmp``."""
    (tmp / "images").mkdir()
    (tmp / "labels").mkdir()
    for p in sorted(p for p in images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:limit]:
        (tmp / "images" / p.name).symlink_to(p)
        label = labels / f"{p.stem}.txt"
        if label.is_file():
            (tmp / "labels" / label.name).symlink_to(label)
    return tmp / "images", tmp / "labels"


def _installed_detector(ctx: MethodContext) -> Detector:
    """The highest-version ``task="detect"`` entry of ``ctx.model_store`` on the CPU EP.

    Raises :class:`ProtocolError` where none is installed.
    """
    entry = find_detector(ctx.model_store)
    if entry is None:
        raise ProtocolError(
            f"protocol 'detect' needs a detector under {ctx.model_store}: install one with "
            "`dir-models add-detector yolo-fastestv2 <weights.pth>`"
        )
    return load_detector(entry, providers=["CPUExecutionProvider"])


@dataclass
class _MethodScoring:
    """What scoring one method needs besides the method: the images, caches and progress settings."""

    ctx: MethodContext
    score: Callable[[Callable[[np.ndarray], np.ndarray] | None, Detector | None], dict[str, float]]
    degraded: DegradedCache
    key_suffix: str
    n_images: int
    progress: bool
    rows: RowCache | None


def _method_row(spec: MethodSpec, job: _MethodScoring) -> DetectRow:
    """One method's row: from the row cache where its outputs are deterministic, else scored now."""
    try:
        restore = spec.bind(job.ctx)
    except MethodUnavailableError as exc:
        return DetectRow(spec.label, spec.name, None, None, None, str(exc))
    weights = f"@{restore.fingerprint}" if restore.fingerprint else ""
    detector = None
    if restore.task_detector is not None:
        try:
            detector = load_detector(restore.task_detector, providers=["CPUExecutionProvider"])
        except ModelStoreError as exc:
            return DetectRow(spec.label, spec.name, None, None, None, f"{restore.task_detector}: {exc}")
        graph = detector.manifest.file_sha256(detector.manifest.onnx_file) or "unrecorded"
        weights += f"+{detector.name}/{detector.version}@{graph}"
    key = f"v{CACHE_VERSION}/{spec.name}{weights}/{job.key_suffix}"
    cacheable = job.rows is not None and (spec.family in CACHED_FAMILIES or restore.fingerprint is not None)
    cached = job.rows.get(key) if job.rows is not None and cacheable else None
    if cached is not None:
        return cached
    bar = tqdm(total=job.n_images, desc=f"detect:{spec.name}", unit="img", disable=not job.progress)
    timer = _Timer()
    result = job.score(_restoring_transform(restore, timer, bar, job.degraded), detector)
    bar.close()
    label = f"Degraded ({job.degraded.preset})" if spec.family == "reference" else spec.label
    if detector is not None:
        label += f" + {detector.name}/{detector.version}"
    row = DetectRow(
        label, spec.name, result["map50"], result["map50_95"], timer.s_per_mp, None, restore.version
    )
    if job.rows is not None and cacheable:
        job.rows.put(key, row)
    return row


def run_detect(
    methods: Sequence[MethodSpec],
    ctx: MethodContext,
    limit: int | None = None,
    progress: bool = True,
    cache_dir: Path | None = None,
    preset: str = DETECT_PRESET,
) -> DetectRun:
    """Score the installed detector on clean, degraded (``identity``) and restored (other methods) inputs.

    The detector is the highest-version ``task="detect"`` entry of ``ctx.model_store`` (install one with
    ``dir-models add-detector``); raises :class:`ProtocolError` where none is installed. ``cache_dir``:
    reuse the rows of the deterministic methods, keyed by detector and the bytes of every degraded input.
    """
    detector = _installed_detector(ctx)
    images, labels = coco128_dirs()
    if not images.is_dir():
        raise DatasetMissingError(f"dataset folder not found: {images}")
    with tempfile.TemporaryDirectory() as tmp:
        if limit is not None:
            images, labels = _subset(images, labels, limit, Path(tmp))
        n = len([p for p in images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")])

        def score(
            transform: Callable[[np.ndarray], np.ndarray] | None, own: Detector | None = None
        ) -> dict[str, float]:
            return evaluate_detector(own or detector, images, labels, transform=transform)

        clean = score(None)
        degraded_cache = DegradedCache(preset)
        digest = degraded_cache.fill(images)
        run = DetectRun(
            detector=f"{detector.name}/{detector.version}",
            n_images=int(clean["n_images"]),
            n_boxes=int(clean["n_boxes"]),
            limit=limit,
            machine=machine_description(),
            started=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            preset=preset,
        )
        run.rows.append(
            DetectRow("Clean (no ISP degradation)", None, clean["map50"], clean["map50_95"], None)
        )
        job = _MethodScoring(
            ctx,
            score,
            degraded_cache,
            f"{run.detector}/{digest}",
            n,
            progress,
            RowCache(cache_dir) if cache_dir is not None else None,
        )
        run.rows.extend(_method_row(spec, job) for spec in methods)
    return run
