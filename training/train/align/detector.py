"""A model_store detector entry as a differentiable PyTorch module, and its pre-processing in PyTorch.

A Yolo-FastestV2 entry (``dir-models add-detector yolo-fastestv2``) is rebuilt as our
:class:`~training.detect.model.YoloFastestV2` from the weights it was installed from (found by the sha256
its manifest records); other ONNX entries (YOLOv5 / YOLOv8 exports) go through
``training.detect.onnx_torch.onnx_to_torch``. The pre-processing mirrors
:meth:`modelstore.detector.Detector.preprocess` on float tensors so gradients pass through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional

from modelstore.detector import find_detector
from modelstore.errors import ModelStoreError
from modelstore.manifest import Manifest, read_manifest, sha256_file
from modelstore.store import verify_files
from training.detect.install import load_yolo_fastestv2
from training.errors import CheckpointError, ConfigError
from training.paths import dataset_dir


@dataclass
class TorchDetector:
    """A detector entry loaded for training: the module (raw outputs: per scale (reg, obj, cls) for
    Yolo-FastestV2, the graph's output for converted ONNX entries), what its input wants, and where its
    weights came from."""

    module: nn.Module
    entry: Path
    manifest: Manifest
    source: dict[str, Any]

    @property
    def ref(self) -> str:
        """``NAME@VERSION`` of the entry."""
        return f"{self.manifest.name}@{self.manifest.version}"

    @property
    def is_yolo_fastestv2(self) -> bool:
        """Whether the module is our Yolo-FastestV2 (raw head outputs, installable as a new entry)."""
        return self.source.get("kind") == "yolo-fastestv2"

    @property
    def local_only(self) -> bool:
        """Whether the entry's weights carry no licence (anything trained through them stays local)."""
        licence = str(self.manifest.training.get("licence", "")).lower()
        return licence.startswith("none") or "never redistribute" in licence


def resolve_detector(store: Path, spec: str) -> Path:
    """``NAME`` (highest version) or ``NAME@VERSION`` of a detector entry under ``store``, or an entry
    folder path -> the entry folder (``ConfigError`` naming what was looked for)."""
    if (Path(spec) / "manifest.json").is_file():
        return Path(spec)
    name, _, version = spec.partition("@")
    if version:
        entry = store / name / version
        if not (entry / "manifest.json").is_file():
            raise ConfigError(f"--detector {spec}: no detector entry at {entry}")
        return entry
    found = find_detector(store, name)
    if found is None:
        raise ConfigError(f"--detector {spec}: no detector entry named {name!r} under {store}")
    return found


def _weights_candidates(entry: Path, manifest: Manifest, given: Path | None) -> list[Path]:
    if given is not None:
        return [given]
    name = str(manifest.training.get("weights_file", ""))
    if not name:
        return []
    return [entry / name, dataset_dir("yolo_fastestv2") / "modelzoo" / name]


def _load_yolo_fastestv2(
    entry: Path, manifest: Manifest, weights: Path | None
) -> tuple[nn.Module, Path] | None:
    """Our Yolo-FastestV2 from the installed weights (sha256 as recorded), or None when not found."""
    want = manifest.training.get("weights_sha256")
    for path in _weights_candidates(entry, manifest, weights):
        if not path.is_file():
            continue
        if sha256_file(path) != want:
            if weights is not None:
                raise ConfigError(
                    f"--detector-weights {weights}: sha256 differs from the one {entry} was installed from"
                )
            continue
        return load_yolo_fastestv2(path, len(manifest.extra["class_names"])), path
    if weights is not None:
        raise ConfigError(f"--detector-weights {weights} does not exist")
    return None


def _onnx_module(entry: Path, manifest: Manifest, trainable: bool) -> nn.Module:
    try:
        from training.detect.onnx_torch import onnx_to_torch  # optional: the ONNX-to-torch converter
    except ImportError as exc:
        raise ConfigError(
            f"{entry}: this tree has no training/detect/onnx_torch.py (onnx_to_torch) to convert the entry's "
            "ONNX graph for training; a Yolo-FastestV2 entry trains from its weights file instead "
            "(--detector-weights)"
        ) from exc
    return onnx_to_torch(entry / manifest.onnx_file, trainable=trainable)


def load_torch_detector(entry: Path, weights: Path | None = None, trainable: bool = False) -> TorchDetector:
    """Load a ``task="detect"`` entry (files verified) as a PyTorch module in eval mode, on the CPU.

    Yolo-FastestV2 entries load from ``weights`` or the weights file their manifest names (next to the
    entry or in the shared ``yolo_fastestv2/modelzoo``) when its sha256 matches; otherwise, and for every
    other entry, the ONNX graph is converted with ``onnx_to_torch`` (its weights parameters when
    ``trainable``, else constants).
    """
    try:
        manifest = read_manifest(entry)
        verify_files(entry, manifest)
    except (OSError, ValueError, ModelStoreError) as exc:
        raise CheckpointError(f"detector entry {entry}: {exc}") from exc
    if manifest.task != "detect":
        raise ConfigError(f"{entry} is a {manifest.task!r} entry, not a detector")
    source: dict[str, Any] = {"entry_model_onnx_sha256": manifest.file_sha256(manifest.onnx_file)}
    loaded = _load_yolo_fastestv2(entry, manifest, weights) if "weights_sha256" in manifest.training else None
    if loaded is not None:
        module, path = loaded
        source |= {"kind": "yolo-fastestv2", "weights": str(path), "weights_sha256": sha256_file(path)}
    else:
        module = _onnx_module(entry, manifest, trainable)
        source |= {"kind": "onnx_to_torch"}
    return TorchDetector(module.eval(), entry, manifest, source)


def prepare_input(images: Tensor, targets: Tensor, manifest: Manifest) -> tuple[Tensor, Tensor]:
    """Images (N, 3, h, w) float32 sRGB [0, 1] -> the detector's input (N, 3, S, S) [0, 1] in its channel
    order (differentiable), and targets (M, 6) [image, class, cx, cy, w, h] normalised to the image ->
    normalised to that input.

    ``resize: stretch``: bilinear resize to S x S (half-pixel centres, as OpenCV's INTER_LINEAR), boxes
    unchanged. ``letterbox``: aspect-preserving resize centred on a ``pad_value`` canvas, boxes moved with it.
    """
    s = int(manifest.extra["input_size"])
    h, w = images.shape[-2:]
    if manifest.extra["resize"] == "stretch":
        x = functional.interpolate(images, size=(s, s), mode="bilinear", align_corners=False)
        moved = targets
    else:
        r = min(s / h, s / w)
        nh, nw = max(1, round(h * r)), max(1, round(w * r))
        py, px = (s - nh) // 2, (s - nw) // 2
        x = functional.interpolate(images, size=(nh, nw), mode="bilinear", align_corners=False)
        pad = float(manifest.extra.get("pad_value", 114)) / 255.0
        x = functional.pad(x, (px, s - nw - px, py, s - nh - py), value=pad)
        scale = torch.tensor([nw / s, nh / s, nw / s, nh / s], dtype=targets.dtype, device=targets.device)
        offset = torch.tensor([px / s, py / s, 0.0, 0.0], dtype=targets.dtype, device=targets.device)
        moved = torch.cat((targets[:, :2], targets[:, 2:] * scale + offset), 1)
    if str(manifest.extra["channel_order"]).upper() == "BGR":
        x = x.flip(1)
    return x, moved
