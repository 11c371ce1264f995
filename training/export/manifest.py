"""The manifest ``dir-export`` writes for a restore entry, built from modelstore's typed specs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from modelstore.manifest import (
    DENOISE_FILE,
    FP16_FILE,
    GUIDE_FILE,
    SCHEMA_VERSION,
    SERVE_FILE,
    DenoiseSpec,
    GuideSpec,
    Manifest,
    ModelFile,
    TensorSpec,
    TileSpec,
    sha256_file,
)
from training.export.graphs import GUIDE_MEAN, GUIDE_OUTPUT, OPSET, SERVING_OUTPUTS, Graph
from training.models import DiRSystem

ENTRY_NAME = "dir-restore"

#: The manifest's words for the denoise graph, by ``ModelConfig.denoise_decode`` (``dfrnet``: no denoiser).
_DENOISE_DESCRIPTION = {
    "dfrnet": "restored = D*(DfR(image))",
    "image": "restored = D*(denoiser(image)), the denoiser trained (dir-train denoise) to give the input's "
    "noise-free rendering",
    "gated": "restored = D*(denoiser(image)) + m * (image - D*(denoiser(image))), the denoiser and the "
    "per-pixel gate m trained (dir-train denoise) to give the input's noise-free rendering, keeping the "
    "input's own pixels where they are already clean",
}

_LATENT_DESCRIPTIONS = {
    "r_plus": "refined DiR r+ = A(r0, pilot)",
    "r0": "baseline DiR (mean of DiRNet)",
    "pilot": "pilot DfR (mean of DfRNet on the input)",
}


@dataclass(frozen=True)
class ExportResult:
    """What the export measured, recorded in the manifest: max-abs PyTorch/ONNX error per graph file, the
    fp32 tolerance, and the ``extra.fp16`` record (its ``onnx_file`` None when the fp16 graph failed)."""

    parity: dict[str, float]
    tolerance: float
    fp16: dict[str, Any]


def _image_spec(m: int) -> TensorSpec:
    return TensorSpec(
        name="image",
        shape=["N", 3, "H", "W"],
        value_range=(0.0, 1.0),
        color_space="sRGB",
        description=f"degraded camera image; H and W multiples of {m}",
    )


def _serving_outputs(channels: int, m: int) -> list[TensorSpec]:
    """``restored`` (N, 3, H, W) sRGB [0, 1], then the latents (N, C, H/m, W/m) in ``SERVING_OUTPUTS``
    order."""
    latent: list[int | str] = ["N", channels, f"H/{m}", f"W/{m}"]
    restored = TensorSpec(
        name="restored",
        shape=["N", 3, "H", "W"],
        value_range=(0.0, 1.0),
        color_space="sRGB",
        description="restored image D*(r+)",
    )
    latents = [
        TensorSpec(name=n, shape=list(latent), description=_LATENT_DESCRIPTIONS[n])
        for n in SERVING_OUTPUTS[1:]
    ]
    return [restored, *latents]


def _guide_spec(system: DiRSystem) -> GuideSpec:
    m = system.size_multiple
    return GuideSpec(
        onnx_file=GUIDE_FILE,
        inputs=[_image_spec(m)],
        outputs=[
            TensorSpec(
                name=GUIDE_OUTPUT,
                shape=["N", system.cfg.align_m2 * system.cfg.align_width, f"H/{m}", f"W/{m}"],
                description="per-position guide features g of A's guided layers, concatenated in layer "
                "order (the G-Conv kernels come from their global average pool)",
            )
        ],
        mean_input=GUIDE_MEAN,
    )


def _files(entry_dir: Path, graphs: list[Graph], fp16: dict[str, Any]) -> list[ModelFile]:
    """Every written graph with its sha256 and role, the fp16 graph last when it passed."""
    files = [ModelFile(path=g.file, sha256=sha256_file(entry_dir / g.file), role=g.role) for g in graphs]
    if fp16["onnx_file"]:
        files.append(ModelFile(path=FP16_FILE, sha256=sha256_file(entry_dir / FP16_FILE), role="serve-fp16"))
    return files


def _denoise_spec(system: DiRSystem) -> DenoiseSpec:
    decode = system.cfg.denoise_decode if system.has_denoiser else "image"
    return DenoiseSpec(
        onnx_file=DENOISE_FILE,
        inputs=["image"],
        outputs=["restored"],
        encoder="denoiser" if system.has_denoiser else "dfrnet",
        decode=decode,
        description=_DENOISE_DESCRIPTION[system.cfg.denoise_decode if system.has_denoiser else "dfrnet"]
        + ": noise and compression artefacts removed, the camera's colour and tone kept (no "
        "alignment network, no global pooling, one pass)",
    )


def _extra(system: DiRSystem, graphs: list[Graph], result: ExportResult) -> dict[str, Any]:
    """``extra``: latent geometry, parity, the fp16 record, the denoise graph and the component graphs."""
    return {
        "latent_channels": system.cfg.latent_channels,
        "latent_stride": system.size_multiple,
        "parity_max_abs_fp32": result.parity,
        "parity_tolerance_fp32": result.tolerance,
        "fp16": result.fp16,
        "denoise": _denoise_spec(system).model_dump(),
        "components": {g.file: {"inputs": list(g.inputs), "outputs": list(g.outputs)} for g in graphs},
    }


def build_manifest(
    system: DiRSystem,
    entry_dir: Path,
    version: str,
    graphs: list[Graph],
    result: ExportResult,
    tile: TileSpec,
    training: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    name: str = ENTRY_NAME,
    aligned_for: dict[str, Any] | None = None,
) -> Manifest:
    """The manifest of the restore entry written to ``entry_dir`` (its graph files must exist: their
    sha256 is recorded). ``training`` / ``metrics``: provenance and evaluation numbers, copied as given.
    ``name``: the entry's name (``dir-restore``; a task-aligned entry has its own). ``aligned_for``: what A
    was trained for (``dir-train align``: task, detector, detector_mode, loss, ...), kept as
    ``extra["aligned_for"]``."""
    m = system.size_multiple
    extra = _extra(system, graphs, result)
    description = (
        "DiR (CVPR 2024) restoration of ISP-degraded camera images: DiRNet + DfRNet pilot -> "
        "alignment network A -> decoder D*"
    )
    if aligned_for is not None:
        extra["aligned_for"] = aligned_for
        description += (
            f"; A trained for {aligned_for['task']} with {aligned_for['detector']} in the loop "
            "(Eq. 8, gamma1 > 0): r+ is task-aligned"
        )
    return Manifest(
        schema_version=SCHEMA_VERSION,
        name=name,
        version=version,
        task="restore",
        description=description,
        onnx_file=SERVE_FILE,
        opset=OPSET,
        inputs=[
            _image_spec(m),
            TensorSpec(
                name=GUIDE_MEAN,
                shape=["N", system.cfg.align_m2 * system.cfg.align_width],
                layout="NC",
                description=f"spatial mean of {GUIDE_FILE}'s {GUIDE_OUTPUT} over the whole image (each "
                "pixel once), the same vector for every tile of one image",
            ),
        ],
        outputs=_serving_outputs(system.cfg.latent_channels, m),
        guide=_guide_spec(system),
        size_multiple=m,
        tile=tile,
        files=_files(entry_dir, graphs, result.fp16),
        extra=extra,
        training=training or {},
        metrics=metrics or {},
        created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
