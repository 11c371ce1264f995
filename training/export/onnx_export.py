"""Export, check and parity-test the DiR ONNX graphs; write the model_store manifest."""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from service.manifest import (
    SCHEMA_VERSION,
    GuideSpec,
    Manifest,
    ModelFile,
    TensorSpec,
    TileSpec,
    sha256_file,
    write_manifest,
)
from training.errors import CheckpointError, ExportError
from training.models import VARIANT_PARTS, DiRSystem, load_system
from training.train.config import TrainConfig

OPSET = 17
PARITY_TOLERANCE_FP32 = 1e-4
#: fp16 graph vs fp32 PyTorch, max-abs error of ``restored`` (sRGB [0, 1]): 2 steps of 8-bit output.
PARITY_TOLERANCE_FP16 = 2.0 / 255.0
FP16_FILE = "model.fp16.onnx"
GUIDE_FILE = "guide.onnx"
#: The serving graph's second input: the spatial mean of the guide graph's output over the whole image.
GUIDE_MEAN = "guide_mean"
GUIDE_OUTPUT = "guide_features"
#: The networks the denoise graph runs besides the trained denoise parts (frozen, shared with ``full``).
DENOISE_GRAPH_PARTS = ("dfrnet", "decoder")

#: The manifest's words for the denoise graph, by ``ModelConfig.denoise_decode`` (``dfrnet``: no denoiser).
_DENOISE_DESCRIPTION = {
    "dfrnet": "restored = D*(DfR(image))",
    "image": "restored = D*(denoiser(image)), the denoiser trained (dir-train denoise) to give the input's "
    "noise-free rendering",
    "gated": "restored = D*(denoiser(image)) + m * (image - D*(denoiser(image))), the denoiser and the "
    "per-pixel gate m trained (dir-train denoise) to give the input's noise-free rendering, keeping the "
    "input's own pixels where they are already clean",
}

#: The colour-keeping graph (manifest ``extra.denoise``): image -> restored = D*(DfR(image)), no alignment.
DENOISE_FILE = "denoise.onnx"
#: Serving tiles written to the manifest (``dir-export --tile-size/--tile-overlap`` override). Images smaller
#: than a tile are padded up to it, so larger tiles only pay off for large images (docs/DECISIONS.md).
DEFAULT_TILE = TileSpec(size=256, overlap=32)
SERVING_OUTPUTS = ("restored", "r_plus", "r0", "pilot")
ENTRY_NAME = "dir-restore"


class ServingGraph(nn.Module):
    """The fused graph: (image, guide_mean) -> (restored, r_plus, r0, pilot).

    image (N, 3, H, W) sRGB [0, 1]; guide_mean (N, m2*F): the spatial mean of :class:`GuideGraph`'s output
    over the whole image ``image`` is (a tile of); ``guide_mean=None`` pools over ``image`` itself.
    """

    def __init__(self, system: DiRSystem) -> None:
        super().__init__()
        self.system = system

    def forward(
        self, image: Tensor, guide_mean: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """See :meth:`DiRSystem.forward`; the dict becomes a tuple in ``SERVING_OUTPUTS`` order."""
        out = self.system(image, guide_mean)
        return out["restored"], out["r_plus"], out["r0"], out["pilot"]


class GuideGraph(nn.Module):
    """Pass 1 of tiled serving: image (N, 3, H, W) sRGB [0, 1] -> guide_features (N, m2*F, H/4, W/4)."""

    def __init__(self, system: DiRSystem) -> None:
        super().__init__()
        self.system = system

    def forward(self, image: Tensor) -> Tensor:
        """See :meth:`DiRSystem.guide_features`."""
        return self.system.guide_features(image)


class DenoiseGraph(nn.Module):
    """The ``denoise`` serving mode: image (N, 3, H, W) sRGB [0, 1] -> restored (N, 3, H, W) in [0, 1].

    :meth:`DiRSystem.denoise`: the degraded image goes through the system's denoiser (trained by
    ``dir-train denoise``; without one, the clean-image encoder DfRNet, as the pilot) and straight into the
    decoder D*, skipping DiRNet and the alignment network. It removes noise and compression artefacts but
    keeps the camera's colour and tone, which A would "correct" (not the paper's restoration;
    docs/DECISIONS.md). No global pooling: tiles are independent, one pass.
    """

    def __init__(self, system: DiRSystem) -> None:
        super().__init__()
        self.system = system

    def forward(self, image: Tensor) -> Tensor:
        """image (N, 3, H, W) float32 sRGB [0, 1], H, W multiples of 4 -> (N, 3, H, W) in [0, 1]."""
        return self.system.denoise(image)


class HalfServingGraph(nn.Module):
    """The fused graph computed in float16 with float32 inputs and outputs (casts at both ends).

    Same I/O names, shapes and ranges as :class:`ServingGraph`, so a service swaps the file, nothing else.
    """

    def __init__(self, system: DiRSystem) -> None:
        super().__init__()
        self.graph = ServingGraph(system).half()

    def forward(self, image: Tensor, guide_mean: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """image (N, 3, H, W) float32 sRGB [0, 1], guide_mean (N, m2*F) float32 -> the four serving
        outputs as float32."""
        restored, r_plus, r0, pilot = self.graph(image.half(), guide_mean.half())
        return restored.float(), r_plus.float(), r0.float(), pilot.float()


class _Mean(nn.Module):
    """An encoder's posterior mean only: image (N, 3, H, W) -> (N, C, H/4, W/4)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, image: Tensor) -> Tensor:
        return self.encoder(image)[0]


class _Clamped(nn.Module):
    """The decoder with the output clamped to [0, 1], as served."""

    def __init__(self, decoder: nn.Module) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, r_plus: Tensor) -> Tensor:
        return self.decoder(r_plus).clamp(0.0, 1.0)


@dataclass
class _Graph:
    file: str
    module: nn.Module
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    role: str


@dataclass
class ExportReport:
    """What :func:`export_system` wrote: the manifest and the max-abs PyTorch/ONNX error per file."""

    manifest: Manifest
    entry_dir: Path
    parity_max_abs: dict[str, float] = field(default_factory=dict)


def _graphs(system: DiRSystem) -> list[_Graph]:
    """Every graph of an entry, in export order: the guide graph first (the serving graph's parity feeds
    need its output), then the serving graph, then the components. Only the denoise graph sees the
    denoiser; the others are exported from :meth:`DiRSystem.without_denoiser`."""
    core = system.without_denoiser()
    parts = core.get_submodule
    return [
        _Graph(GUIDE_FILE, GuideGraph(core), ("image",), (GUIDE_OUTPUT,), "serve-guide"),
        _Graph("model.onnx", ServingGraph(core), ("image", GUIDE_MEAN), SERVING_OUTPUTS, "serve"),
        _Graph(DENOISE_FILE, DenoiseGraph(system), ("image",), ("restored",), "serve-denoise"),
        _Graph("dirnet.onnx", _Mean(parts("dirnet")), ("image",), ("r0",), "component"),
        _Graph("dfrnet.onnx", _Mean(parts("dfrnet")), ("image",), ("pilot",), "component"),
        _Graph("alignment.onnx", parts("alignment"), ("r0", "pilot"), ("r_plus",), "component"),
        _Graph("decoder.onnx", _Clamped(parts("decoder")), ("r_plus",), ("restored",), "component"),
    ]


def _export_one(graph: _Graph, example: tuple[Tensor, ...], path: Path) -> None:
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
    import onnx
    import onnxruntime as ort

    try:
        onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{path.name} fails onnx.checker: {exc}") from exc
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run(session: Any, graph: _Graph, inputs: tuple[Tensor, ...]) -> list[np.ndarray]:
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
    graph: _Graph,
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


def _whole_image_feeds(guide: _Graph, path: Path, images: list[Tensor]) -> list[tuple[Tensor, ...]]:
    """(image, guide_mean) per parity batch, guide_mean = the spatial mean of the exported guide graph's
    output on the whole image (what the service computes from its tiles)."""
    session = _session(path)
    feeds: list[tuple[Tensor, ...]] = []
    for x in images:
        (features,) = _run(session, guide, (x,))
        feeds.append((x, torch.from_numpy(features).mean(dim=(2, 3))))
    return feeds


def export_system(
    system: DiRSystem,
    entry_dir: Path,
    version: str,
    parity_images: list[Tensor],
    training: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    tolerance: float = PARITY_TOLERANCE_FP32,
    tile: TileSpec = DEFAULT_TILE,
) -> ExportReport:
    """Export a full-variant system to ``entry_dir`` with parity checks; returns the written manifest.

    ``parity_images``: batches (n, 3, H, W) float32 sRGB [0, 1], H, W multiples of 4 (real degraded
    images; use at least two shapes to exercise the dynamic axes). ``tile``: the serving tiles recorded in
    the manifest (size and overlap multiples of the latent stride). The serving graph is checked as served:
    ``model.onnx(image, mean over H, W of guide.onnx(image))`` against PyTorch ``system(image)``.
    """
    if system.variant != "full":
        raise ExportError(f"only the full method is served; got variant {system.variant!r}")
    m = system.size_multiple
    if tile.size % m or tile.overlap % m or tile.overlap >= tile.size:
        raise ExportError(
            f"tile size {tile.size} and overlap {tile.overlap} must be multiples of {m}, overlap < size"
        )
    for x in parity_images:
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] % m or x.shape[3] % m:
            raise ExportError(
                f"parity images must be (n, 3, H, W) with H, W multiples of {m}; got {tuple(x.shape)}"
            )
    system = system.cpu().eval()
    entry_dir.mkdir(parents=True, exist_ok=True)
    feeds = _component_batches(system, parity_images)
    kind = {GUIDE_FILE: "image", DENOISE_FILE: "image", "dirnet.onnx": "image", "dfrnet.onnx": "image"}
    kind |= {"alignment.onnx": "latents", "decoder.onnx": "r_plus"}
    graphs = _graphs(system)
    with torch.no_grad():
        served = [ServingGraph(system)(x) for x in parity_images]
    parity: dict[str, float] = {}
    for graph in graphs:
        path = entry_dir / graph.file
        if graph.file == "model.onnx":
            batches = _whole_image_feeds(graphs[0], entry_dir / GUIDE_FILE, parity_images)
            feeds["served"] = batches
            references: list[tuple[Tensor, ...]] | None = served
        else:
            batches, references = feeds[kind[graph.file]], None
        _export_one(graph, batches[0], path)
        parity[graph.file] = _check_and_compare(graph, path, batches, references)
        if parity[graph.file] > tolerance:
            raise ExportError(
                f"{graph.file}: max-abs error {parity[graph.file]:.3g} vs PyTorch > {tolerance:g}"
            )
    fp16 = _export_fp16(system.without_denoiser(), entry_dir / FP16_FILE, feeds["served"], served)
    c = system.cfg.latent_channels
    guide_channels = system.cfg.align_m2 * system.cfg.align_width
    latent: list[int | str] = ["N", c, f"H/{m}", f"W/{m}"]
    desc = {
        "restored": "restored image D*(r+)",
        "r_plus": "refined DiR r+ = A(r0, pilot)",
        "r0": "baseline DiR (mean of DiRNet)",
        "pilot": "pilot DfR (mean of DfRNet on the input)",
    }
    outputs = [
        TensorSpec(
            name="restored",
            shape=["N", 3, "H", "W"],
            value_range=(0.0, 1.0),
            color_space="sRGB",
            description=desc["restored"],
        )
    ] + [TensorSpec(name=n, shape=list(latent), description=desc[n]) for n in SERVING_OUTPUTS[1:]]
    image_spec = TensorSpec(
        name="image",
        shape=["N", 3, "H", "W"],
        value_range=(0.0, 1.0),
        color_space="sRGB",
        description=f"degraded camera image; H and W multiples of {m}",
    )
    files = [ModelFile(path=g.file, sha256=sha256_file(entry_dir / g.file), role=g.role) for g in graphs]
    if fp16["onnx_file"]:
        files.append(ModelFile(path=FP16_FILE, sha256=sha256_file(entry_dir / FP16_FILE), role="serve-fp16"))
    guide = GuideSpec(
        onnx_file=GUIDE_FILE,
        inputs=[image_spec],
        outputs=[
            TensorSpec(
                name=GUIDE_OUTPUT,
                shape=["N", guide_channels, f"H/{m}", f"W/{m}"],
                description="per-position guide features g of A's guided layers, concatenated in layer "
                "order (the G-Conv kernels come from their global average pool)",
            )
        ],
        mean_input=GUIDE_MEAN,
    )
    manifest = Manifest(
        schema_version=SCHEMA_VERSION,
        name=ENTRY_NAME,
        version=version,
        task="restore",
        description="DiR (CVPR 2024) restoration of ISP-degraded camera images: DiRNet + DfRNet pilot -> "
        "alignment network A -> decoder D*",
        onnx_file="model.onnx",
        opset=OPSET,
        inputs=[
            image_spec,
            TensorSpec(
                name=GUIDE_MEAN,
                shape=["N", guide_channels],
                layout="NC",
                description=f"spatial mean of {GUIDE_FILE}'s {GUIDE_OUTPUT} over the whole image (each "
                "pixel once), the same vector for every tile of one image",
            ),
        ],
        outputs=outputs,
        guide=guide,
        size_multiple=m,
        tile=tile,
        files=files,
        extra={
            "latent_channels": c,
            "latent_stride": m,
            "parity_max_abs_fp32": parity,
            "parity_tolerance_fp32": tolerance,
            "fp16": fp16,
            "denoise": {
                "onnx_file": DENOISE_FILE,
                "inputs": ["image"],
                "outputs": ["restored"],
                "encoder": "denoiser" if system.has_denoiser else "dfrnet",
                "decode": system.cfg.denoise_decode if system.has_denoiser else "image",
                "description": _DENOISE_DESCRIPTION[
                    system.cfg.denoise_decode if system.has_denoiser else "dfrnet"
                ]
                + ": noise and compression artefacts removed, the camera's colour and tone kept (no "
                "alignment network, no global pooling, one pass)",
            },
            "components": {g.file: {"inputs": list(g.inputs), "outputs": list(g.outputs)} for g in graphs},
        },
        training=training or {},
        metrics=metrics or {},
        created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
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
    import copy

    half = HalfServingGraph(copy.deepcopy(system)).eval()
    graph = _Graph(path.name, half, ("image", GUIDE_MEAN), SERVING_OUTPUTS, "serve-fp16")
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
    from training.data import degrade_seeded, load_rgb
    from training.train.data import center_crops, list_images

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
    from training.train.config import load_config

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
    from service.manifest import read_manifest
    from training.export.recover import system_from_entry
    from training.train.config import config_from_dict

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
