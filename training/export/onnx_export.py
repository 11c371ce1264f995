"""Export, check and parity-test the DiR ONNX graphs of a restore entry; the manifest is
:mod:`training.export.manifest`, the exported modules :mod:`training.export.graphs`."""

from __future__ import annotations

import copy
import json
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import Tensor

from modelstore.manifest import (
    ALIGNMENT_FILE,
    DECODER_FILE,
    DENOISE_FILE,
    DIRNET_FILE,
    FP16_FILE,
    GUIDE_FILE,
    PILOT_FILE,
    SERVE_FILE,
    Manifest,
    TileSpec,
    read_manifest,
    sha256_file,
    write_manifest,
)
from training.data import degrade_seeded, load_rgb
from training.errors import CheckpointError, ExportError
from training.export.graphs import (
    GUIDE_MEAN,
    OPSET,
    SERVING_OUTPUTS,
    Graph,
    HalfServingGraph,
    ServingGraph,
    entry_graphs,
)
from training.export.manifest import ENTRY_NAME, ExportResult, build_manifest
from training.models import VARIANT_PARTS, DiRSystem, load_system
from training.models.checkpoint import system_from_entry
from training.train.config import TrainConfig, config_from_dict, load_config
from training.train.data import center_crops, list_images

PARITY_TOLERANCE_FP32 = 1e-4
#: fp16 graph vs fp32 PyTorch, max-abs error of ``restored`` (sRGB [0, 1]): 2 steps of 8-bit output.
PARITY_TOLERANCE_FP16 = 2.0 / 255.0
#: The networks the denoise graph runs besides the trained denoise parts (frozen, shared with ``full``).
DENOISE_GRAPH_PARTS = ("dfrnet", "decoder")
#: Serving tiles written to the manifest (``dir-export --tile-size/--tile-overlap`` override). Images smaller
#: than a tile are padded up to it, so larger tiles only pay off for large images (docs/DECISIONS.md).
DEFAULT_TILE = TileSpec(size=256, overlap=32)
#: Which parity feed each graph gets: the images, the latents (r0, pilot) or r+.
_FEED_KIND = {
    GUIDE_FILE: "image",
    DENOISE_FILE: "image",
    DIRNET_FILE: "image",
    PILOT_FILE: "image",
    ALIGNMENT_FILE: "latents",
    DECODER_FILE: "r_plus",
}


@dataclass
class ExportReport:
    """What :func:`export_system` wrote: the manifest and the max-abs PyTorch/ONNX error per file."""

    manifest: Manifest
    entry_dir: Path
    parity_max_abs: dict[str, float] = field(default_factory=dict)


def _export_one(graph: Graph, example: tuple[Tensor, ...], path: Path) -> None:
    axes = {name: {0: "N", 2: "H", 3: "W"} for name in graph.inputs + graph.outputs}
    if GUIDE_MEAN in axes:
        axes[GUIDE_MEAN] = {0: "N"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph.module,
            example,
            str(path),
            input_names=list(graph.inputs),
            output_names=list(graph.outputs),
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )


def _session(path: Path) -> Any:
    """``onnx.checker`` (full check) on ``path``, then a CPU ONNX Runtime session on it."""
    try:
        onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{path.name} fails onnx.checker: {exc}") from exc
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run(session: Any, graph: Graph, inputs: tuple[Tensor, ...]) -> list[np.ndarray]:
    feed = {n: t.numpy() for n, t in zip(graph.inputs, inputs, strict=True)}
    return list(session.run(list(graph.outputs), feed))


def _max_abs(path: Path, got: list[np.ndarray], refs: tuple[Tensor, ...]) -> float:
    worst = 0.0
    for g, r in zip(got, refs, strict=True):
        if g.shape != tuple(r.shape):
            raise ExportError(f"{path.name}: ONNX output shape {g.shape} != PyTorch {tuple(r.shape)}")
        worst = max(worst, float(np.abs(g - r.numpy()).max()))
    return worst


def _as_tuple(value: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return value if isinstance(value, tuple) else (value,)


def _check_and_compare(
    graph: Graph,
    path: Path,
    batches: list[tuple[Tensor, ...]],
    references: list[tuple[Tensor, ...]] | None = None,
) -> float:
    """Max-abs error of the ONNX graph at ``path`` on ``batches`` against ``references`` (default: the
    PyTorch module on the same inputs)."""
    session = _session(path)
    worst = 0.0
    for k, inputs in enumerate(batches):
        if references is None:
            with torch.no_grad():
                refs = _as_tuple(graph.module(*inputs))
        else:
            refs = references[k]
        worst = max(worst, _max_abs(path, _run(session, graph, inputs), refs))
    return worst


def _component_batches(system: DiRSystem, images: list[Tensor]) -> dict[str, list[tuple[Tensor, ...]]]:
    out: dict[str, list[tuple[Tensor, ...]]] = {"image": [(x,) for x in images], "latents": [], "r_plus": []}
    with torch.no_grad():
        for x in images:
            o = system(x)
            out["latents"].append((o["r0"], o["pilot"]))
            out["r_plus"].append((o["r_plus"],))
    return out


def _whole_image_feeds(guide: Graph, path: Path, images: list[Tensor]) -> list[tuple[Tensor, ...]]:
    """(image, guide_mean) per parity batch, guide_mean = the spatial mean of the exported guide graph's
    output on the whole image (what the service computes from its tiles)."""
    session = _session(path)
    feeds: list[tuple[Tensor, ...]] = []
    for x in images:
        (features,) = _run(session, guide, (x,))
        feeds.append((x, torch.from_numpy(features).mean(dim=(2, 3))))
    return feeds


def _check_geometry(system: DiRSystem, tile: TileSpec, images: list[Tensor]) -> None:
    """Raise ``ExportError`` unless ``system`` is the full variant, ``tile`` fits its latent stride and
    every parity batch is (n, 3, H, W) with H, W multiples of it."""
    if system.variant != "full":
        raise ExportError(f"only the full method is served; got variant {system.variant!r}")
    m = system.size_multiple
    if tile.size % m or tile.overlap % m or tile.overlap >= tile.size:
        raise ExportError(
            f"tile size {tile.size} and overlap {tile.overlap} must be multiples of {m}, overlap < size"
        )
    for x in images:
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] % m or x.shape[3] % m:
            raise ExportError(
                f"parity images must be (n, 3, H, W) with H, W multiples of {m}; got {tuple(x.shape)}"
            )


def _export_graphs(
    system: DiRSystem, graphs: list[Graph], entry_dir: Path, images: list[Tensor], tolerance: float
) -> tuple[dict[str, float], list[tuple[Tensor, ...]], list[tuple[Tensor, ...]]]:
    """Export and parity-check every graph; returns the max-abs error per file, the served feeds
    (image, guide_mean) and PyTorch's serving outputs on the whole images. Raises ``ExportError`` above
    ``tolerance``."""
    feeds = _component_batches(system, images)
    with torch.no_grad():
        served = [ServingGraph(system)(x) for x in images]
    parity: dict[str, float] = {}
    for graph in graphs:
        path = entry_dir / graph.file
        if graph.file == SERVE_FILE:
            batches = _whole_image_feeds(graphs[0], entry_dir / GUIDE_FILE, images)
            feeds["served"] = batches
            references: list[tuple[Tensor, ...]] | None = served
        else:
            batches, references = feeds[_FEED_KIND[graph.file]], None
        _export_one(graph, batches[0], path)
        parity[graph.file] = _check_and_compare(graph, path, batches, references)
        if parity[graph.file] > tolerance:
            raise ExportError(
                f"{graph.file}: max-abs error {parity[graph.file]:.3g} vs PyTorch > {tolerance:g}"
            )
    return parity, feeds["served"], served


def export_system(
    system: DiRSystem,
    entry_dir: Path,
    version: str,
    parity_images: list[Tensor],
    training: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    tolerance: float = PARITY_TOLERANCE_FP32,
    tile: TileSpec = DEFAULT_TILE,
    name: str = ENTRY_NAME,
    aligned_for: dict[str, Any] | None = None,
) -> ExportReport:
    """Export a full-variant system to ``entry_dir`` with parity checks; returns the written manifest.

    ``parity_images``: batches (n, 3, H, W) float32 sRGB [0, 1], H, W multiples of 4 (real degraded
    images; use at least two shapes to exercise the dynamic axes). ``tile``: the serving tiles recorded in
    the manifest (size and overlap multiples of the latent stride). The serving graph is checked as served:
    ``model.onnx(image, mean over H, W of guide.onnx(image))`` against PyTorch ``system(image)``. ``name``
    and ``aligned_for``: the manifest's entry name and task-alignment record (:func:`build_manifest`).
    """
    _check_geometry(system, tile, parity_images)
    system = system.cpu().eval()
    entry_dir.mkdir(parents=True, exist_ok=True)
    graphs = entry_graphs(system)
    parity, served_feeds, served = _export_graphs(system, graphs, entry_dir, parity_images, tolerance)
    fp16 = _export_fp16(system.without_denoiser(), entry_dir / FP16_FILE, served_feeds, served)
    result = ExportResult(parity=parity, tolerance=tolerance, fp16=fp16)
    manifest = build_manifest(
        system, entry_dir, version, graphs, result, tile, training, metrics, name, aligned_for
    )
    write_manifest(entry_dir, manifest)
    return ExportReport(manifest=manifest, entry_dir=entry_dir, parity_max_abs=parity)


def _export_fp16(
    system: DiRSystem,
    path: Path,
    batches: list[tuple[Tensor, ...]],
    references: list[tuple[Tensor, ...]],
) -> dict[str, Any]:
    """Export :class:`HalfServingGraph` to ``path`` and compare it (ONNX Runtime, CPU) with fp32 PyTorch.

    ``batches``: (image, guide_mean) as served; ``references``: fp32 PyTorch outputs on the whole images.
    Returns the manifest's ``extra.fp16`` record: ``onnx_file`` (None when parity failed; the file is then
    removed), max-abs error per output, the tolerance on ``restored`` and, for the latents, the max-abs
    error relative to the output's largest magnitude.
    """
    half = HalfServingGraph(copy.deepcopy(system)).eval()
    graph = Graph(path.name, half, ("image", GUIDE_MEAN), SERVING_OUTPUTS, "serve-fp16")
    _export_one(graph, batches[0], path)
    session = _session(path)
    worst = dict.fromkeys(SERVING_OUTPUTS, 0.0)
    relative = dict.fromkeys(SERVING_OUTPUTS[1:], 0.0)
    for inputs, refs in zip(batches, references, strict=True):
        got = _run(session, graph, inputs)
        for name, g, r in zip(SERVING_OUTPUTS, got, refs, strict=True):
            err = float(np.abs(g - r.numpy()).max())
            worst[name] = max(worst[name], err)
            if name in relative:
                relative[name] = max(relative[name], err / max(float(r.abs().max()), 1e-12))
    ok = worst["restored"] <= PARITY_TOLERANCE_FP16
    if not ok:
        path.unlink()
    return {
        "onnx_file": path.name if ok else None,
        "parity_max_abs": worst,
        "parity_max_rel_latents": relative,
        "tolerance_restored": PARITY_TOLERANCE_FP16,
        "reference": "fp32 PyTorch on the whole parity images; the fp16 graph run by ONNX Runtime (CPU) "
        "with guide_mean from the fp32 guide graph",
    }


def parity_images(cfg: TrainConfig) -> list[Tensor]:
    """Real degraded images for the parity test: the held-out images of ``cfg``'s data folder.

    Two batches of different shapes: two 128x128 centre crops and one 96x160 crop, degraded with the
    ``ablation`` preset (seeded per file).
    """
    files = list_images(cfg.data_path())[-max(cfg.data.val_images, 2) :]
    images = [load_rgb(p) for p in files]
    square = center_crops(images[:2], 128)
    wide = center_crops(images[:1], 160)[:, :, 32:128, :]
    names = [p.name for p in files]
    return [
        degrade_seeded(square, "ablation", "held-out", names[:2]),
        degrade_seeded(wide, "ablation", "held-out", names[:1]),
    ]


def parity_images_for_run(run_dir: Path) -> list[Tensor]:
    """:func:`parity_images` for the config of a run folder."""
    return parity_images(load_config(run_dir / "config.yaml"))


def export_run(run: Path, entry_dir: Path, version: str, tile: TileSpec = DEFAULT_TILE) -> ExportReport:
    """Export the full system of a run folder to ``entry_dir`` (see the package docstring): its denoise.pt
    when it has one (the full system plus the denoise mode's denoiser), else its stage2.pt."""
    if not (run / "config.yaml").is_file():
        raise CheckpointError(f"{run} is not a dir-train run folder (no config.yaml)")
    system = load_system(run, "full")
    stage = "denoise" if system.has_denoiser else "stage2"
    ckpt = torch.load(run / f"{stage}.pt", map_location="cpu", weights_only=True)
    training = {
        "run": run.name,
        f"{stage}_steps": ckpt["step"],
        f"{stage}_checkpoint_sha256": sha256_file(run / f"{stage}.pt"),
        "config": ckpt["config"],
    }
    if ckpt.get("init_from"):
        training["init_from"] = ckpt["init_from"]
    scores = run / "scores.json"
    metrics = json.loads(scores.read_text()) if scores.is_file() else {}
    return export_system(system, entry_dir, version, parity_images_for_run(run), training, metrics, tile=tile)


def export_entry(
    source: Path,
    entry_dir: Path,
    version: str,
    tile: TileSpec | None = None,
    denoiser: Path | None = None,
) -> ExportReport:
    """Re-export a model_store entry from its own weights (no run folder): every graph of the current
    exporter, parity-checked again, into ``entry_dir``.

    ``denoiser``: a ``denoise.pt`` of ``dir-train denoise --init-from SOURCE``; its denoiser then drives the
    ``denoise`` graph (all other graphs keep the entry's weights; the checkpoint must have started from
    this entry's model.onnx) and ``training.denoise`` records its run, steps, sha256 and config.

    The PyTorch system is rebuilt from ``source``'s model.onnx (:func:`system_from_entry`); the parity
    images come from the data folder of the manifest's training config; training provenance, metrics and
    (unless ``tile`` is given) the tile geometry carry over, with ``training.rebuilt_from`` naming the
    source entry and its model.onnx sha256.
    """
    if source.resolve() == entry_dir.resolve():
        raise ExportError(f"re-export {source} into a new folder, not into itself")
    system = system_from_entry(source)
    old = read_manifest(source)
    training = dict(old.training)
    if denoiser is not None:
        system, record = _with_denoiser(system, denoiser, old.file_sha256(old.onnx_file))
        if record["denoiser_from"] == "entry" and "denoise" in training:
            record["continued"] = training["denoise"]
        training["denoise"] = record
        # The denoise stage's model config (its decode) is the one the new entry is rebuilt from.
        training["config"] = {**training["config"], "model": asdict(system.cfg)}
    training["rebuilt_from"] = {
        "entry": f"{old.name}/{old.version}",
        "model_onnx_sha256": old.file_sha256(old.onnx_file),
    }
    images = parity_images(config_from_dict(dict(old.training["config"])))
    chosen = tile or old.tile or DEFAULT_TILE
    return export_system(system, entry_dir, version, images, training, dict(old.metrics), tile=chosen)


def _with_denoiser(
    system: DiRSystem, checkpoint: Path, model_sha256: str | None
) -> tuple[DiRSystem, dict[str, Any]]:
    """``system`` with the denoise parts (denoiser, detail gate) of a denoise.pt; returns it and the
    provenance record. The denoise graph also runs the frozen DfRNet and D*, so those must equal the entry's
    (checked): a denoise.pt trained from an entry with the same Stage I parts but another alignment network
    fits too (``same_entry`` in the record says whether it started from this entry's model.onnx, whose
    sha256 is ``model_sha256``)."""
    if not checkpoint.is_file() or checkpoint.name != "denoise.pt":
        raise CheckpointError(f"--denoiser wants a denoise.pt written by dir-train denoise, got {checkpoint}")
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    started = ckpt.get("init_from") or {}
    trained = load_system(checkpoint, "full")
    for part in DENOISE_GRAPH_PARTS:
        for name, value in system.get_submodule(part).state_dict().items():
            if not torch.equal(value, trained.get_submodule(part).state_dict()[name]):
                raise ExportError(
                    f"{checkpoint} was not trained from this entry's {part} ({part}.{name} differs; its "
                    f"init_from is {started.get('entry')!r}): train it with dir-train denoise --init-from "
                    "<this entry>"
                )
    # The entry's networks and architecture, the checkpoint's denoise parts and decode.
    cfg = replace(system.cfg, denoise_decode=trained.cfg.denoise_decode, gate_width=trained.cfg.gate_width)
    combined = DiRSystem(cfg, "full", denoiser=True)
    for part in combined.parts:
        source = system if part in VARIANT_PARTS["full"] else trained
        combined.get_submodule(part).load_state_dict(source.get_submodule(part).state_dict())
    record = {
        "run": checkpoint.parent.name,
        "steps": ckpt["step"],
        "checkpoint_sha256": sha256_file(checkpoint),
        "config": ckpt["config"],
        "denoiser_from": started.get("denoiser_from", "dfrnet"),
        "same_entry": started.get("model_onnx_sha256") == model_sha256,
    }
    return combined.eval(), record
