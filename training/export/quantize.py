"""int8 graphs of a model_store entry (``dir-export quantize ENTRY --to NEW_ENTRY``).

ONNX Runtime's static quantization (``onnxruntime.quantization.quantize_static``, QDQ format, int8 weights
per output channel, uint8 activations) calibrated on tiles of the training images (``bsds500_train/train``)
degraded the way training degrades them (:func:`training.data.degrade_seeded`, preset ``train``); never
evaluation images. The new entry is a copy of ENTRY whose manifest serves the int8 graphs (``onnx_file``
and/or ``extra.denoise.onnx_file``) and records how they were made under ``extra.int8``; the fp32 graphs
stay in the entry as components, so the service needs no change to run it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)

from modelstore.manifest import MANIFEST_NAME, Manifest, sha256_file, write_manifest
from training.data import degrade_seeded, load_rgb_batch
from training.errors import DataError, DiRError, ExportError
from training.paths import dataset_dir

CALIBRATION_PRESET = "train"
CALIBRATION_DATASET = "bsds500_train"
INT8_SUFFIX = ".int8.onnx"


@dataclass(frozen=True)
class Int8Report:
    """What :func:`quantize_entry` wrote: the new entry folder and, per int8 graph, the PSNR (dB, peak 1) of
    its ``restored`` output against the fp32 graph's on held-back training tiles (mean and worst tile)."""

    entry_dir: Path
    psnr_vs_fp32: dict[str, tuple[float, float]]


def training_tiles(count: int, side: int, seed: int = 0, skip: int = 0) -> list[np.ndarray]:
    """``count`` degraded training tiles, each ``(1, 3, side, side)`` float32 sRGB in [0, 1].

    Images ``skip .. skip + count - 1`` of ``bsds500_train/train`` (sorted by name), one seeded random crop
    each, degraded by :func:`training.data.degrade_seeded` with the training preset. Calibration uses
    ``skip=0``, the parity check the images after them. Raises :class:`DataError` when there are too few.
    """
    folder = dataset_dir(CALIBRATION_DATASET) / "train"
    files = sorted(p for p in folder.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if len(files) < skip + count:
        raise DataError(f"{folder} holds {len(files)} images; {skip + count} are needed")
    rng = np.random.default_rng(seed)
    tiles = []
    for path in files[skip : skip + count]:
        image = load_rgb_batch(path)
        h, w = image.shape[-2:]
        if min(h, w) < side:
            raise DataError(f"{path} is {w}x{h}, smaller than the {side}px tile")
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = image[..., y : y + side, x : x + side]
        with torch.no_grad():
            degraded = degrade_seeded(crop, CALIBRATION_PRESET, CALIBRATION_DATASET, [path.name])
        tiles.append(degraded.numpy().astype(np.float32))
    return tiles


def graph_feeds(entry_dir: Path, graph: str, tiles: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
    """The input feeds of ``graph`` for each tile: ``image``, plus ``guide_mean`` (1, K) (the tile's spatial
    mean of the fp32 ``guide.onnx`` features) for a graph that takes it."""
    session = ort.InferenceSession(str(entry_dir / graph), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    guide = None
    if "guide_mean" in names:
        guide = ort.InferenceSession(str(entry_dir / "guide.onnx"), providers=["CPUExecutionProvider"])
    feeds = []
    for tile in tiles:
        feed = {"image": tile}
        if guide is not None:
            features = guide.run(None, {"image": tile})[0]
            feed["guide_mean"] = features.mean(axis=(2, 3)).astype(np.float32)
        feeds.append(feed)
    return feeds


class _Feeds(CalibrationDataReader):
    """The calibration feeds, one after the other, as ``quantize_static`` reads them."""

    def __init__(self, feeds: Sequence[dict[str, np.ndarray]]) -> None:
        self._feeds: Iterator[dict[str, np.ndarray]] = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def end_convs(onnx_path: Path) -> list[str]:
    """Names of the first and the last Conv node of the graph (in graph order)."""
    convs = [n.name for n in onnx.load(str(onnx_path)).graph.node if n.op_type == "Conv"]
    return sorted({convs[0], convs[-1]}) if convs else []


def quantize_graph(
    source: Path, target: Path, feeds: Sequence[dict[str, np.ndarray]], keep_end_convs: bool = False
) -> Path:
    """Write ``source``'s static int8 QDQ graph to ``target`` (per-channel int8 weights, uint8 activations
    calibrated on ``feeds``); ``keep_end_convs`` leaves the first and last Conv in float32."""
    pre = target.with_suffix(".pre.onnx")
    try:
        quant_pre_process(str(source), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre),
            str(target),
            _Feeds(feeds),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=end_convs(pre) if keep_end_convs else [],
        )
    finally:
        pre.unlink(missing_ok=True)
    return target


def restored_psnr(fp32: Path, int8: Path, feeds: Sequence[dict[str, np.ndarray]]) -> tuple[float, float]:
    """(mean, worst) PSNR in dB (peak 1) of ``int8``'s first output against ``fp32``'s over ``feeds``."""
    runs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (fp32, int8)]
    scores = []
    for feed in feeds:
        ref, out = (s.run(None, feed)[0] for s in runs)
        mse = float(np.mean((np.clip(ref, 0, 1) - np.clip(out, 0, 1)) ** 2))
        scores.append(10.0 * np.log10(1.0 / max(mse, 1e-12)))
    return float(np.mean(scores)), float(np.min(scores))


def quantize_entry(
    entry_dir: Path,
    to: Path,
    graphs: Sequence[str] = ("denoise.onnx",),
    calibration: int = 32,
    keep_end_convs: bool = False,
    min_psnr_db: float = 40.0,
) -> Int8Report:
    """Copy ``entry_dir`` to ``to`` (its folder name the new version) and serve int8 versions of ``graphs``
    there: ``model.onnx`` -> ``onnx_file``, ``denoise.onnx`` -> ``extra.denoise.onnx_file``.

    Calibration: :func:`training_tiles` (``calibration`` tiles of the manifest's tile side). Each int8 graph
    is checked against its fp32 graph on 16 further training tiles; a mean PSNR below ``min_psnr_db`` raises
    :class:`ExportError` and nothing is written.
    """
    manifest = Manifest.model_validate_json((entry_dir / MANIFEST_NAME).read_text())
    served = {manifest.onnx_file: "onnx_file"}
    denoise = manifest.extra.get("denoise")
    if isinstance(denoise, dict) and denoise.get("onnx_file"):
        served[str(denoise["onnx_file"])] = "denoise"
    unknown = [g for g in graphs if g not in served]
    if unknown:
        raise ExportError(f"{entry_dir}: {unknown} are not served graphs (served: {sorted(served)})")
    if to.exists():
        raise ExportError(f"{to} exists; quantize writes a new entry version")
    side = manifest.tile.size if manifest.tile else 256
    calib, held = training_tiles(calibration, side), training_tiles(16, side, seed=1, skip=calibration)
    work = to.parent / f".{to.name}.partial"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(entry_dir, work)
    scores = {}
    try:
        for graph in graphs:
            target = work / graph.replace(".onnx", INT8_SUFFIX)
            quantize_graph(entry_dir / graph, target, graph_feeds(entry_dir, graph, calib), keep_end_convs)
            scores[graph] = restored_psnr(entry_dir / graph, target, graph_feeds(entry_dir, graph, held))
            if scores[graph][0] < min_psnr_db:
                raise ExportError(f"{graph} int8 is {scores[graph][0]:.2f} dB from fp32 (< {min_psnr_db})")
        _write_manifest(work, to.name, graphs, served, scores, calibration, keep_end_convs)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    work.rename(to)
    return Int8Report(to, scores)


def _write_manifest(
    work: Path,
    version: str,
    graphs: Sequence[str],
    served: dict[str, str],
    scores: dict[str, tuple[float, float]],
    calibration: int,
    keep_end_convs: bool,
) -> None:
    """Point the copied manifest at the int8 graphs (role ``serve``/``serve-denoise``; the fp32 ones become
    ``component``), record ``extra.int8`` and every file's sha256, and validate it."""
    data = json.loads((work / MANIFEST_NAME).read_text())
    data["version"] = version
    roles = {f["path"]: f["role"] for f in data["files"]}
    for graph in graphs:
        int8 = graph.replace(".onnx", INT8_SUFFIX)
        roles[int8] = roles[graph]
        roles[graph] = "component"
        if served[graph] == "onnx_file":
            data["onnx_file"] = int8
        else:
            data["extra"]["denoise"]["onnx_file"] = int8
    data["files"] = [{"path": p, "sha256": sha256_file(work / p), "role": r} for p, r in roles.items()]
    data["extra"]["int8"] = {
        "graphs": {g: g.replace(".onnx", INT8_SUFFIX) for g in graphs},
        "method": "onnxruntime quantize_static QDQ, per-channel int8 weights, uint8 activations",
        "fp32_end_convs": keep_end_convs,
        "calibration": f"{calibration} tiles of {CALIBRATION_DATASET}/train, preset {CALIBRATION_PRESET}",
        "psnr_vs_fp32_db": {g: {"mean": round(m, 3), "worst": round(w, 3)} for g, (m, w) in scores.items()},
    }
    write_manifest(work, Manifest.model_validate(data))


def main(argv: list[str] | None = None) -> int:
    """``dir-export quantize ENTRY --to NEW_ENTRY [--graphs denoise.onnx,model.onnx]``; exit code 2 on a DiR
    error."""
    p = argparse.ArgumentParser(
        prog="dir-export quantize", description="Write a new entry version serving int8 graphs of ENTRY."
    )
    p.add_argument("entry", type=Path, help="model_store entry folder, e.g. model_store/dir-restore/3.3.0")
    p.add_argument("--to", type=Path, required=True, help="the new entry folder (must not exist)")
    p.add_argument("--graphs", default="denoise.onnx", help="comma-separated served graphs to quantize")
    p.add_argument("--calibration", type=int, default=32, help="calibration tiles (training images)")
    p.add_argument("--fp32-end-convs", action="store_true", help="keep the first and last Conv in fp32")
    p.add_argument("--min-psnr", type=float, default=40.0, help="least mean PSNR (dB) vs the fp32 graph")
    args = p.parse_args(argv)
    graphs = [g.strip() for g in args.graphs.split(",") if g.strip()]
    try:
        report = quantize_entry(
            args.entry, args.to, graphs, args.calibration, args.fp32_end_convs, args.min_psnr
        )
    except DiRError as exc:
        print(f"dir-export quantize: error: {exc}", file=sys.stderr)
        return 2
    for graph, (mean, worst) in report.psnr_vs_fp32.items():
        print(f"{graph}: int8 vs fp32 restored PSNR mean {mean:.2f} dB, worst tile {worst:.2f} dB")
    print(report.entry_dir / MANIFEST_NAME)
    return 0
