"""What ``dir-train align`` writes besides its run folder: the aligned restore entry (the ``dir-export``
layout, parity-checked) and, in joint mode, the fine-tuned detector as a new detector entry.

An entry trained through a detector whose weights carry no licence (the Yolo-FastestV2 entry) must not be
committed: its manifest says so (``extra.aligned_for.local_only``) and :func:`check_uncommittable` refuses a
destination inside a git work tree that git does not ignore.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from modelstore.manifest import read_manifest
from training.data import degrade_seeded
from training.detect.install import install_yolo_fastestv2
from training.errors import ConfigError
from training.export import ExportReport, export_system
from training.export.onnx_export import DEFAULT_TILE
from training.models import DiRSystem
from training.train.align.data import LabelledSet
from training.train.align.detector import TorchDetector

#: The folder name (under the model store) of aligned entries by default: ``dir-align-<detector name>``.
ALIGNED_PREFIX = "dir-align-"


def default_destination(store: Path, detector: TorchDetector, version: str = "1") -> Path:
    """``store/dir-align-<detector name>/<version>`` (git-ignored in this repository)."""
    return store / f"{ALIGNED_PREFIX}{detector.manifest.name}" / version


def detector_entry_name(destination: Path) -> str:
    """The name of the fine-tuned detector entry written beside an aligned entry in joint mode."""
    return f"{destination.parent.name}-detector"


def check_uncommittable(path: Path, detector: TorchDetector) -> None:
    """Raise :class:`ConfigError` when ``detector`` carries no licence and ``path`` lies in a git work tree
    where git would not ignore it (outside a work tree, or without git, there is nothing to check)."""
    if not detector.local_only:
        return
    probe = path.resolve()
    anchor = next((p for p in (probe, *probe.parents) if p.exists()), None)
    if anchor is None:
        return
    try:
        done = subprocess.run(
            ["git", "-C", str(anchor), "check-ignore", "-q", str(probe)], capture_output=True, check=False
        )
    except OSError:
        return
    if done.returncode == 1:
        raise ConfigError(
            f"{path}: {detector.ref}'s weights carry no licence, so an entry trained through them must stay "
            f"local, but git does not ignore this path; write it under model_store/{ALIGNED_PREFIX}*/ "
            "(git-ignored) instead"
        )


def check_destination(path: Path, force: bool) -> None:
    """Refuse an existing entry folder unless ``force`` (then it is replaced when the entry is written)."""
    if path.exists() and not force:
        raise ConfigError(f"--to {path} exists; pass --force to replace it or choose another version")


def parity_batches(data: LabelledSet, preset: str) -> list[Tensor]:
    """Real degraded images for the export's parity test: centre crops of the first two training images
    (square) and of the first (half height), degraded by ``preset`` with per-file seeds; sides are
    multiples of 4, at most 128."""
    side = min(128, *(min(im.shape[1:]) for im in data.images[:2])) // 4 * 4
    crops = []
    for im in data.images[:2]:
        top, left = (im.shape[1] - side) // 2, (im.shape[2] - side) // 2
        crops.append(im[:, top : top + side, left : left + side])
    square = torch.stack(crops).float().div(255.0)
    half = square[:1, :, : max(4, side // 2 // 4 * 4)]
    names = [p.name for p in data.files[:2]]
    return [
        degrade_seeded(square, preset, "align-parity", names),
        degrade_seeded(half, preset, "align-parity", names[:1]),
    ]


def write_aligned_entry(
    system: DiRSystem,
    destination: Path,
    init_from: Path,
    parity: list[Tensor],
    aligned_for: dict[str, Any],
    provenance: dict[str, Any],
) -> ExportReport:
    """Export ``system`` (the init entry's networks with the trained A) to ``destination`` with parity
    checks. The manifest keeps the init entry's training config (its model config rebuilds the system),
    tile geometry and metrics, names the entry after its folder, and records ``aligned_for`` and the run's
    ``provenance`` under ``training.align``."""
    old = read_manifest(init_from)
    training = {
        **old.training,
        "align": provenance,
        "rebuilt_from": {
            "entry": f"{old.name}/{old.version}",
            "model_onnx_sha256": old.file_sha256("model.onnx"),
        },
    }
    return export_system(
        system,
        destination,
        destination.name,
        parity,
        training,
        dict(old.metrics),
        tile=old.tile or DEFAULT_TILE,
        name=destination.parent.name,
        aligned_for=aligned_for,
    )


def write_detector_entry(detector: TorchDetector, weights: Path, destination: Path) -> Path:
    """Joint mode: install the fine-tuned Yolo-FastestV2 ``weights`` (a state_dict file) as the detector
    entry ``<store>/<aligned name>-detector/<version>`` beside the aligned entry -> its folder."""
    return install_yolo_fastestv2(
        weights,
        destination.parent.parent,
        name=detector_entry_name(destination),
        version=destination.name,
        class_names=[str(n) for n in detector.manifest.extra["class_names"]],
        force=True,
    )
