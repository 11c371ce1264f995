"""The model_store manifest: the contract between ``dir-export`` (writer), the service and evaluation
(readers).

Layout: ``model_store/<name>/<version>/manifest.json`` next to the ONNX file(s) it describes. This module
imports neither torch nor onnxruntime so every side can use it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MANIFEST_NAME = "manifest.json"
#: Version of this schema written by ``dir-export``. 1: one serving graph (no ``schema_version`` field);
#: 2: adds ``guide`` (two-pass tiled serving). Readers accept every version up to this one.
SCHEMA_VERSION = 2

SERVE_FILE = "model.onnx"
"""The serving graph: image (N, 3, H, W) sRGB [0, 1] (+ guide mean) -> restored (N, 3, H, W) sRGB [0, 1]."""
FP16_FILE = "model.fp16.onnx"
"""The serving graph in half precision (same inputs and outputs, float32 at the boundary)."""
GUIDE_FILE = "guide.onnx"
"""Pass 1 of two-pass serving: image -> per-position guide features (N, K, H/s, W/s)."""
DENOISE_FILE = "denoise.onnx"
"""The denoise mode's graph: image (N, 3, H, W) sRGB [0, 1] -> restored, same shape, one pass."""
DIRNET_FILE = "dirnet.onnx"
"""Component graph: image (N, 3, H, W) sRGB [0, 1] -> baseline DiR r0 (N, C, H/s, W/s)."""
PILOT_FILE = "dfrnet.onnx"
"""Component graph: image (N, 3, H, W) sRGB [0, 1] -> pilot DfR (N, C, H/s, W/s)."""
ALIGNMENT_FILE = "alignment.onnx"
"""Component graph: (r0, pilot), each (N, C, H/s, W/s) -> aligned representation r+ (N, C, H/s, W/s)."""
DECODER_FILE = "decoder.onnx"
"""Component graph: a representation (N, C, H/s, W/s), e.g. r+ -> restored (N, 3, H, W) sRGB [0, 1]."""


class TensorSpec(BaseModel):
    """One graph input or output. ``shape`` uses strings for dynamic axes ("N", "H", "W", "H/4")."""

    model_config = ConfigDict(extra="forbid")

    name: str
    shape: list[int | str]
    dtype: Literal["float32", "float16", "uint8", "int64"] = "float32"
    layout: str = "NCHW"
    value_range: tuple[float, float] | None = None
    color_space: str | None = None
    description: str = ""


class TileSpec(BaseModel):
    """How the service may cut large images: square tiles of ``size`` overlapping by ``overlap`` pixels."""

    model_config = ConfigDict(extra="forbid")

    size: int = Field(256, gt=0)
    overlap: int = Field(32, ge=0)


class ModelFile(BaseModel):
    """One file of the entry with its sha256 (hex), verified at load."""

    model_config = ConfigDict(extra="forbid")

    path: str
    sha256: str
    role: str = "serve"


class GuideSpec(BaseModel):
    """Pass 1 of two-pass tiled serving, for models that pool over the whole image.

    ``onnx_file`` maps the serving graph's image input to ``outputs[0]`` (N, K, H/s, W/s), per-position
    features whose spatial mean over the whole image (each pixel once) the serving graph takes as its
    input ``mean_input`` (N, K). The service runs every tile through this graph, averages, then runs every
    tile with its image's mean through the serving graph.
    """

    model_config = ConfigDict(extra="forbid")

    onnx_file: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    mean_input: str

    @model_validator(mode="after")
    def _check_scale(self) -> GuideSpec:
        _ = self.scale
        return self

    @property
    def scale(self) -> int:
        """The downscale factor ``s`` of ``outputs[0]``, read from its last axis (``"W/4"`` -> 4, ``"W"`` ->
        1); raises ``ValueError`` when the output has no such axis."""
        if not self.outputs or len(self.outputs[0].shape) != 4:
            raise ValueError("guide outputs[0] must be (N, K, H/s, W/s)")
        axis = str(self.outputs[0].shape[-1])
        _, slash, factor = axis.partition("/")
        if not slash:
            return 1
        if not factor.isdigit() or int(factor) < 1:
            raise ValueError(f"guide output axis {axis!r} is not W/s with an integer s >= 1")
        return int(factor)


class DenoiseSpec(BaseModel):
    """The denoise graph of a restore entry, recorded as ``extra["denoise"]``: image (N, 3, H, W) sRGB
    [0, 1] -> restored (N, 3, H, W) sRGB [0, 1], one pass, no guide.

    ``encoder``: "denoiser" (a trained denoiser feeds the decoder) or "dfrnet" (the pilot DfRNet does);
    ``decode``: how the decoder's output becomes the image ("image", "gated" ...).
    """

    model_config = ConfigDict(extra="forbid")

    onnx_file: str
    inputs: list[str] = Field(default_factory=lambda: ["image"])
    outputs: list[str] = Field(default_factory=lambda: ["restored"])
    encoder: str = "dfrnet"
    decode: str = "image"
    description: str = ""


class Manifest(BaseModel):
    """Everything the service needs to load and call a model_store entry, plus its provenance."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = Field(default=1, ge=1, le=SCHEMA_VERSION)
    name: str
    version: str
    task: Literal["restore", "detect", "component"] = "restore"
    description: str = ""
    onnx_file: str = SERVE_FILE
    opset: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    guide: GuideSpec | None = Field(
        default=None,
        description="two-pass serving: the graph whose whole-image mean feeds an input of onnx_file",
    )
    size_multiple: int = Field(1, gt=0)
    tile: TileSpec | None = None
    files: list[ModelFile] = Field(default_factory=list)
    extra: dict[str, Any] = Field(
        default_factory=dict, description="task-specific settings (detector classes, anchors ...)"
    )
    training: dict[str, Any] = Field(
        default_factory=dict, description="config and run that produced the weights"
    )
    metrics: dict[str, Any] = Field(
        default_factory=dict, description="evaluation numbers with their protocol"
    )
    created: str = ""

    @property
    def denoise(self) -> DenoiseSpec | None:
        """The typed ``extra["denoise"]``, or None when the entry has no denoise graph; raises
        ``ValueError`` (pydantic ``ValidationError``) when it is malformed."""
        spec = self.extra.get("denoise")
        if not isinstance(spec, dict) or not spec.get("onnx_file"):
            return None
        return DenoiseSpec.model_validate(spec)

    @property
    def aligned_for(self) -> dict[str, Any] | None:
        """``extra["aligned_for"]`` of a task-aligned entry (task, detector, detector_mode, loss,
        detector_entry, ...; written by ``dir-train align``), or None for any other entry."""
        record = self.extra.get("aligned_for")
        return record if isinstance(record, dict) else None

    def file_sha256(self, path: str) -> str | None:
        """The recorded sha256 of ``path`` (relative to the entry folder), or None when not recorded."""
        for f in self.files:
            if f.path == path:
                return f.sha256
        return None


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_manifest(entry_dir: Path) -> Manifest:
    """Parse ``entry_dir/manifest.json`` (raises ``FileNotFoundError`` / pydantic ``ValidationError``)."""
    return Manifest.model_validate(json.loads((entry_dir / MANIFEST_NAME).read_text()))


def write_manifest(entry_dir: Path, manifest: Manifest) -> Path:
    """Write ``manifest.json`` (pretty, stable key order) and return its path."""
    entry_dir.mkdir(parents=True, exist_ok=True)
    out = entry_dir / MANIFEST_NAME
    out.write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")
    return out
