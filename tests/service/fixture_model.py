"""A tiny convolutional stand-in with the restoration entry's exact I/O contract, exported with torch.onnx.

Input ``image`` (N, 3, H, W) float32 sRGB [0, 1], H and W multiples of 4; outputs ``restored`` (N, 3, H, W)
in [0, 1] and ``r_plus``/``r0``/``pilot`` (N, 8, H/4, W/4). Like the DiR alignment network it has a
``GuidedLayer`` whose G-Conv kernels come from a global average pool of guide features; its FC weights are
random (non-zero), so the output depends on what the pool sees. Two-pass entries (the default, as
``dir-export`` writes them) add ``guide.onnx`` (image -> ``guide_features`` (N, 8, H/4, W/4)) and the
serving input ``guide_mean`` (N, 8); single-pass entries pool over each input, as entries exported before
two-pass serving do. Entries may carry ``denoise.onnx`` (image -> ``restored``, no pooling, as ``dir-export``
writes for the ``denoise`` restore mode).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from modelstore.manifest import (
    SCHEMA_VERSION,
    GuideSpec,
    Manifest,
    ModelFile,
    TensorSpec,
    TileSpec,
    sha256_file,
    write_manifest,
)
from training.models import GuidedLayer

CHANNELS = 8
SCALE = 4
#: Std of the guided layer's FC weights and gain of its guide convolutions: how strongly the G-Conv kernels
#: depend on the global pool (chosen so that pooling per 64-px tile loses > 0.1 dB on monarch).
POOL_WEIGHT = 4.0
GUIDE_GAIN = 5.0


class TinyDiR(nn.Module):
    """Deterministic small conv net (seeded weights) with one pooled guided layer."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encode = nn.Sequential(
            nn.Conv2d(3, CHANNELS, 3, padding=1), nn.ReLU(), nn.Conv2d(CHANNELS, CHANNELS, SCALE, SCALE)
        )
        self.pilot = nn.Conv2d(3, CHANNELS, SCALE, SCALE)
        self.guided = GuidedLayer(CHANNELS, CHANNELS, 3)
        nn.init.normal_(self.guided.fc.weight, std=POOL_WEIGHT)
        with torch.no_grad():
            for conv in self.guided.guide[::2]:
                conv.weight.mul_(GUIDE_GAIN)
        self.decode = nn.Conv2d(CHANNELS, 3, 3, padding=1)
        self.up = nn.Upsample(scale_factor=SCALE, mode="nearest")

    def guide_features(self, image: torch.Tensor) -> torch.Tensor:
        """image (N, 3, H, W) -> the guided layer's guide features (N, 8, H/4, W/4)."""
        return self.guided.guide(self.pilot(image))  # type: ignore[no-any-return]

    def forward(
        self, image: torch.Tensor, guide_mean: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """image (N, 3, H, W), guide_mean (N, 8) or None (pool over ``image``) -> the four outputs."""
        r0 = self.encode(image)
        pilot = self.pilot(image)
        r_plus = r0 + self.guided(r0, pilot, guide_mean)
        restored = torch.clamp(image + 0.05 * torch.tanh(self.decode(self.up(r_plus))), 0.0, 1.0)
        return restored, r_plus, r0, pilot


class HalfTinyDiR(nn.Module):
    """``TinyDiR`` computed in float16 with float32 inputs and outputs, like the real fp16 export."""

    def __init__(self) -> None:
        super().__init__()
        self.model = TinyDiR().half()

    def forward(
        self, image: torch.Tensor, guide_mean: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        half_mean = None if guide_mean is None else guide_mean.half()
        restored, r_plus, r0, pilot = self.model(image.half(), half_mean)
        return restored.float(), r_plus.float(), r0.float(), pilot.float()


class TinyDenoise(nn.Module):
    """The denoise-mode stand-in: image (N, 3, H, W) -> restored (N, 3, H, W) in [0, 1], local only (a
    3x3 and a 4x4-stride conv, then nearest upsampling: tiles are independent)."""

    def __init__(self) -> None:
        super().__init__()
        self.model = TinyDiR()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        m = self.model
        return torch.clamp(image - 0.05 * torch.tanh(m.decode(m.up(m.pilot(image)))), 0.0, 1.0)


class _Guide(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.model = TinyDiR()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.guide_features(image)


def _export(model: nn.Module, onnx_path: Path, inputs: list[str], outputs: list[str]) -> None:
    spatial = {0: "N", 2: "H", 3: "W"}
    example = {"image": torch.rand(1, 3, 64, 64), "guide_mean": torch.rand(1, CHANNELS)}
    torch.onnx.export(
        model.eval(),
        tuple(example[name] for name in inputs),
        str(onnx_path),
        input_names=inputs,
        output_names=outputs,
        dynamic_axes={name: {0: "N"} if name == "guide_mean" else spatial for name in inputs + outputs},
        opset_version=17,
        dynamo=False,
    )


def build_entry(
    store: Path,
    name: str = "dir-restore",
    version: str = "0.0.1",
    tile: int = 64,
    overlap: int = 16,
    fp16: bool = False,
    two_pass: bool = True,
    denoise: bool = True,
) -> Path:
    """Export ``TinyDiR`` to ``store/name/version/`` with a manifest (sha256 recorded); returns the folder.

    ``two_pass=True`` writes the format of ``dir-export`` (``guide.onnx`` + the ``guide_mean`` input);
    ``False`` the older single-input format. ``fp16=True`` also writes ``model.fp16.onnx``
    (:class:`HalfTinyDiR`), recorded as dir-export does. ``denoise=True`` writes ``denoise.onnx``
    (:class:`TinyDenoise`) and ``extra.denoise`` as dir-export does.
    """
    entry = store / name / version
    entry.mkdir(parents=True, exist_ok=True)
    serve_inputs = ["image", "guide_mean"] if two_pass else ["image"]
    serve_outputs = ["restored", "r_plus", "r0", "pilot"]
    _export(TinyDiR(), entry / "model.onnx", serve_inputs, serve_outputs)
    files = [ModelFile(path="model.onnx", sha256=sha256_file(entry / "model.onnx"))]
    extra: dict[str, object] = {}
    if fp16:
        _export(HalfTinyDiR(), entry / "model.fp16.onnx", serve_inputs, serve_outputs)
        files.append(
            ModelFile(
                path="model.fp16.onnx", sha256=sha256_file(entry / "model.fp16.onnx"), role="serve-fp16"
            )
        )
        extra["fp16"] = {"onnx_file": "model.fp16.onnx"}
    if denoise:
        _export(TinyDenoise(), entry / "denoise.onnx", ["image"], ["restored"])
        files.append(
            ModelFile(path="denoise.onnx", sha256=sha256_file(entry / "denoise.onnx"), role="serve-denoise")
        )
        extra["denoise"] = {"onnx_file": "denoise.onnx", "inputs": ["image"], "outputs": ["restored"]}
    latent: list[int | str] = ["N", CHANNELS, f"H/{SCALE}", f"W/{SCALE}"]
    image = TensorSpec(name="image", shape=["N", 3, "H", "W"], value_range=(0.0, 1.0), color_space="sRGB")
    inputs = [image]
    guide = None
    if two_pass:
        _export(_Guide(), entry / "guide.onnx", ["image"], ["guide_features"])
        files.append(
            ModelFile(path="guide.onnx", sha256=sha256_file(entry / "guide.onnx"), role="serve-guide")
        )
        inputs.append(TensorSpec(name="guide_mean", shape=["N", CHANNELS], layout="NC"))
        guide = GuideSpec(
            onnx_file="guide.onnx",
            inputs=[image],
            outputs=[TensorSpec(name="guide_features", shape=latent)],
            mean_input="guide_mean",
        )
    manifest = Manifest(
        schema_version=SCHEMA_VERSION if two_pass else 1,
        name=name,
        version=version,
        task="restore",
        description="test fixture: tiny random conv net with the restoration I/O contract",
        opset=17,
        inputs=inputs,
        outputs=[
            TensorSpec(name="restored", shape=["N", 3, "H", "W"], value_range=(0.0, 1.0), color_space="sRGB"),
            TensorSpec(name="r_plus", shape=latent),
            TensorSpec(name="r0", shape=latent),
            TensorSpec(name="pilot", shape=latent),
        ],
        guide=guide,
        size_multiple=SCALE,
        tile=TileSpec(size=tile, overlap=overlap),
        files=files,
        extra=extra,
    )
    write_manifest(entry, manifest)
    return entry
