"""Evaluation protocols by name (docs/DESIGN.md section 6) and the datasets they read.

A protocol turns dataset folders into :class:`Sample` s: a degraded image every method sees identically and,
where one exists, its clean reference. Synthetic protocols degrade each clean image with the ISP simulator
at a seed fixed by (preset, dataset, file name), so every run and every method sees the same input.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch

from training.evaluate.errors import DatasetMissingError, ProtocolError, UnknownNameError
from training.isp import simulate, stable_seed
from training.paths import dataset_dir

DatasetKind = Literal["clean", "pairs", "noref"]


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset folder under the shared data root.

    ``kind``: "clean" (clean images to degrade), "pairs" (``*_real.png`` noisy with ``*_mean.png`` reference)
    or "noref" (real noisy images without a reference). ``patterns``: file globs of the images (or of the
    noisy half of the pairs).
    """

    name: str
    kind: DatasetKind
    patterns: tuple[str, ...]
    label: str


DATASETS: dict[str, DatasetSpec] = {
    d.name: d
    for d in (
        DatasetSpec("cset14", "clean", ("*.png",), "Set14"),
        DatasetSpec("bsd100", "clean", ("*.png",), "BSD100"),
        DatasetSpec("cbsd68", "clean", ("*.png",), "CBSD68"),
        DatasetSpec("cset5", "clean", ("*.png",), "Set5"),
        DatasetSpec("mcmaster", "clean", ("*.png", "*.tif"), "McMaster"),
        DatasetSpec("cc15", "pairs", ("*_real.png",), "CC15 (Nam)"),
        DatasetSpec("rni15", "noref", ("*.png", "*.jpg"), "RNI15"),
    )
}


@dataclass(frozen=True)
class Sample:
    """One evaluation input.

    ``degraded``: (1, 3, H, W) float32 sRGB [0, 1]; ``clean``: the reference, same shape, or None where the
    dataset has none (rni15); ``seed``: the simulator seed of a synthetic protocol, else None.
    """

    dataset: str
    name: str
    degraded: torch.Tensor
    clean: torch.Tensor | None
    seed: int | None = None

    @property
    def megapixels(self) -> float:
        """H x W / 1e6."""
        return self.degraded.shape[-2] * self.degraded.shape[-1] / 1e6


def load_rgb(path: Path) -> torch.Tensor:
    """Read an 8-bit image file as (1, 3, H, W) float32 sRGB in [0, 1]; grayscale repeated to 3 channels."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise DatasetMissingError(f"cannot read image {path}")
    rgb = np.ascontiguousarray(bgr[..., ::-1], dtype=np.float32) / 255.0
    return torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0).contiguous()


def get_dataset(name: str) -> DatasetSpec:
    """The spec of a registered dataset (raises :class:`UnknownNameError` listing the valid names)."""
    if name not in DATASETS:
        raise UnknownNameError("dataset", name, list(DATASETS))
    return DATASETS[name]


def dataset_files(name: str, limit: int | None = None) -> list[Path]:
    """The sorted image files of a dataset (the first ``limit`` of them where given)."""
    spec = get_dataset(name)
    folder = dataset_dir(name)
    if not folder.is_dir():
        raise DatasetMissingError(f"dataset folder not found: {folder}")
    files = sorted({f for pattern in spec.patterns for f in folder.glob(pattern)})
    if not files:
        raise DatasetMissingError(f"no images matching {spec.patterns} in {folder}")
    return files[:limit] if limit is not None else files


def synthetic_samples(preset: str, dataset: str, limit: int | None = None) -> list[Sample]:
    """Clean images of ``dataset`` degraded by ISP preset ``preset`` at per-image fixed seeds.

    The image's own seed is ``stable_seed(preset, dataset, file name)``, passed as a one-element sequence so
    the simulator uses it as is (the same inputs as ``dir-train score``); odd sizes are handled by the
    simulator (reflect-pad to even, crop back).
    """
    spec = get_dataset(dataset)
    if spec.kind != "clean":
        raise ProtocolError(f"protocol {preset!r} needs clean images; dataset {dataset!r} is {spec.kind!r}")
    samples = []
    for path in dataset_files(dataset, limit):
        clean = load_rgb(path)
        seed = stable_seed(preset, dataset, path.name)
        with torch.no_grad():
            degraded = simulate(clean, preset=preset, seed=[seed]).degraded
        samples.append(Sample(dataset, path.stem, degraded.float().clamp(0.0, 1.0).contiguous(), clean, seed))
    return samples


def real_samples(dataset: str, limit: int | None = None) -> list[Sample]:
    """Real noisy images: cc15 noisy/mean pairs, or rni15 noisy images without a reference."""
    spec = get_dataset(dataset)
    if spec.kind == "clean":
        raise ProtocolError(
            f"protocol 'real' needs real noisy images; dataset {dataset!r} holds clean images"
        )
    samples = []
    for path in dataset_files(dataset, limit):
        noisy = load_rgb(path)
        clean = None
        if spec.kind == "pairs":
            ref = path.with_name(path.name.replace("_real.png", "_mean.png"))
            if not ref.is_file():
                raise DatasetMissingError(f"reference image not found: {ref}")
            clean = load_rgb(ref)
        samples.append(Sample(dataset, path.stem.removesuffix("_real"), noisy, clean))
    return samples


def clean_samples(dataset: str, limit: int | None = None) -> list[Sample]:
    """The clean images of ``dataset`` as their own input and reference (clean-input fidelity: a restorer
    should hand a clean photo back unchanged)."""
    spec = get_dataset(dataset)
    if spec.kind != "clean":
        raise ProtocolError(f"protocol 'clean' needs clean images; dataset {dataset!r} is {spec.kind!r}")
    samples = []
    for path in dataset_files(dataset, limit):
        image = load_rgb(path)
        samples.append(Sample(dataset, path.stem, image, image))
    return samples


@dataclass(frozen=True)
class ProtocolSpec:
    """A named protocol: default datasets and how to build one dataset's samples."""

    name: str
    description: str
    default_datasets: tuple[str, ...]
    samples: Callable[[str, int | None], list[Sample]]
    paper_table: str


PROTOCOLS: dict[str, ProtocolSpec] = {
    p.name: p
    for p in (
        ProtocolSpec(
            "ablation",
            "synthetic ISP with randomised hyperparameters + Gaussian sigma in [0.05, 0.1] + JPEG quality "
            "in [10, 30] (ISP preset 'ablation')",
            ("cset14", "bsd100"),
            lambda ds, limit: synthetic_samples("ablation", ds, limit),
            "Table 5",
        ),
        ProtocolSpec(
            "lowlight",
            "synthetic ISP + Gaussian sigma in [0.15, 0.35] + Poisson lambda in [0.02, 0.04] (ISP preset "
            "'lowlight')",
            ("cset14", "bsd100"),
            lambda ds, limit: synthetic_samples("lowlight", ds, limit),
            "Table 4 (noise levels only; the paper reports segmentation there, no PSNR)",
        ),
        ProtocolSpec(
            "clean",
            "clean-input fidelity: each clean image is its own input and reference (nothing to remove)",
            ("cset14", "bsd100"),
            clean_samples,
            "none (a do-no-harm check of ours)",
        ),
        ProtocolSpec(
            "real",
            "real camera noise: cc15 noisy vs mean-of-burst reference; rni15 without reference",
            ("cc15", "rni15"),
            real_samples,
            "no PSNR in the paper; Table 1 scores Nam (the source of cc15) with the standard NIQE model: "
            "BM3D 12.58, DiR 8.96 (not comparable in absolute terms with our NIQE fit)",
        ),
    )
}


def protocol_names() -> list[str]:
    """Registered image-restoration protocol names (``detect`` is separate, see training.evaluate.detect)."""
    return list(PROTOCOLS)


def get_protocol(name: str) -> ProtocolSpec:
    """The spec of a registered protocol (raises :class:`UnknownNameError` listing the valid names)."""
    if name not in PROTOCOLS:
        raise UnknownNameError("protocol", name, [*PROTOCOLS, "detect"])
    return PROTOCOLS[name]
