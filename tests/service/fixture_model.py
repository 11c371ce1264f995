"""A tiny convolutional stand-in with the restoration entry's exact I/O contract, exported with torch.onnx.

Input ``image`` (N, 3, H, W) float32 sRGB [0, 1], H and W multiples of 4; outputs ``restored`` (N, 3, H, W)
in [0, 1] and ``r_plus``/``r0``/``pilot`` (N, 8, H/4, W/4). Fully convolutional with a small receptive
field, so tiled and whole-image results agree once the overlap covers it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from service.manifest import Manifest, ModelFile, TensorSpec, TileSpec, sha256_file, write_manifest

CHANNELS = 8
SCALE = 4


class TinyDiR(nn.Module):
    """Deterministic small conv net (seeded weights)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encode = nn.Sequential(
            nn.Conv2d(3, CHANNELS, 3, padding=1), nn.ReLU(), nn.Conv2d(CHANNELS, CHANNELS, SCALE, SCALE)
        )
        self.pilot = nn.Conv2d(3, CHANNELS, SCALE, SCALE)
        self.align = nn.Conv2d(2 * CHANNELS, CHANNELS, 3, padding=1)
        self.decode = nn.Conv2d(CHANNELS, 3, 3, padding=1)
        self.up = nn.Upsample(scale_factor=SCALE, mode="nearest")

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        r0 = self.encode(image)
        pilot = self.pilot(image)
        r_plus = r0 + self.align(torch.cat([r0, pilot], dim=1))
        restored = torch.clamp(image + 0.05 * torch.tanh(self.decode(self.up(r_plus))), 0.0, 1.0)
        return restored, r_plus, r0, pilot


class HalfTinyDiR(nn.Module):
    """``TinyDiR`` computed in float16 with float32 input and outputs, like the real fp16 export."""

    def __init__(self) -> None:
        super().__init__()
        self.model = TinyDiR().half()

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        restored, r_plus, r0, pilot = self.model(image.half())
        return restored.float(), r_plus.float(), r0.float(), pilot.float()


def _export(model: nn.Module, onnx_path: Path) -> None:
    spatial = {0: "N", 2: "H", 3: "W"}
    torch.onnx.export(
        model,
        (torch.rand(1, 3, 64, 64),),
        str(onnx_path),
        input_names=["image"],
        output_names=["restored", "r_plus", "r0", "pilot"],
        dynamic_axes={
            "image": spatial,
            "restored": spatial,
            "r_plus": spatial,
            "r0": spatial,
            "pilot": spatial,
        },
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
) -> Path:
    """Export ``TinyDiR`` to ``store/name/version/`` with a manifest (sha256 recorded); returns the folder.

    ``fp16=True`` also writes ``model.fp16.onnx`` (:class:`HalfTinyDiR`), recorded as dir-export does.
    """
    entry = store / name / version
    entry.mkdir(parents=True, exist_ok=True)
    onnx_path = entry / "model.onnx"
    _export(TinyDiR().eval(), onnx_path)
    files = [ModelFile(path="model.onnx", sha256=sha256_file(onnx_path))]
    extra: dict[str, object] = {}
    if fp16:
        half_path = entry / "model.fp16.onnx"
        _export(HalfTinyDiR().eval(), half_path)
        files.append(ModelFile(path=half_path.name, sha256=sha256_file(half_path), role="serve-fp16"))
        extra["fp16"] = {"onnx_file": "model.fp16.onnx"}
    latent: list[int | str] = ["N", CHANNELS, f"H/{SCALE}", f"W/{SCALE}"]
    manifest = Manifest(
        name=name,
        version=version,
        task="restore",
        description="test fixture: tiny random conv net with the restoration I/O contract",
        opset=17,
        inputs=[
            TensorSpec(name="image", shape=["N", 3, "H", "W"], value_range=(0.0, 1.0), color_space="sRGB")
        ],
        outputs=[
            TensorSpec(name="restored", shape=["N", 3, "H", "W"], value_range=(0.0, 1.0), color_space="sRGB"),
            TensorSpec(name="r_plus", shape=latent),
            TensorSpec(name="r0", shape=latent),
            TensorSpec(name="pilot", shape=latent),
        ],
        size_multiple=SCALE,
        tile=TileSpec(size=tile, overlap=overlap),
        files=files,
        extra=extra,
    )
    write_manifest(entry, manifest)
    return entry
