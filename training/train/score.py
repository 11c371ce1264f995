"""PSNR of a trained run (or a shipped entry) on the paper's ``ablation`` protocol (Table 5): cset14, bsd100.

Each clean image y* (sRGB [0, 1], full size) is degraded once with ``simulate(y*, preset,
seed=[stable_seed(preset, dataset, filename)])`` (the shared protocol seeding of docs/ISP.md), so every run
and every method sees the same inputs. For the variants that decode with D* (full, no_pilot) the record also
holds D*'s ceiling: the PSNR of D*(mean DfRNet(y*)), the clean image through its own representation, which
no restoration through the frozen D* can exceed by much.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional

from training.colour import colour_fit
from training.data import degrade_seeded, load_rgb_batch
from training.errors import CheckpointError, ConfigError
from training.evaluate.metrics import psnr
from training.models import DiRSystem, Variant, load_system
from training.models.checkpoint import system_from_entry
from training.paths import dataset_dir
from training.train.data import list_images

PAPER_TABLE5_PSNR = {
    "full": {"cset14": 24.1, "bsd100": 25.0},
    "no_pilot": {"cset14": 23.9, "bsd100": 24.6},
    "r0_only": {"cset14": 22.4, "bsd100": 23.8},
    "autoencoder": {"cset14": 21.6, "bsd100": 23.1},
}


def decoder_ceiling(system: DiRSystem, clean: torch.Tensor) -> torch.Tensor:
    """D*(mean DfRNet(clean)) clamped to [0, 1]: (N, 3, H, W) sRGB -> same; any H, W (replicate-padded)."""
    h, w = clean.shape[-2:]
    m = system.size_multiple
    x = functional.pad(clean, (0, (-w) % m, 0, (-h) % m), mode="replicate")
    r_star = system.get_submodule("dfrnet")(x)[0]
    return system.get_submodule("decoder")(r_star).clamp(0.0, 1.0)[..., :h, :w]


def _load(source: Path, variant: Variant) -> DiRSystem:
    """The system to score: a run folder's checkpoint, or a model_store entry's weights (full method only)."""
    if (source / "manifest.json").is_file():
        if variant != "full":
            raise CheckpointError(
                f"{source} is a model_store entry, which serves the full method only; "
                f"variant {variant!r} needs a run folder"
            )
        return system_from_entry(source).eval()
    return load_system(source, variant)


def centre_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """The centre ``size`` x ``size`` of ``image`` (..., H, W); an image smaller than that on a side keeps
    that side whole."""
    h, w = image.shape[-2:]
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return image[..., top : top + size, left : left + size]


@torch.no_grad()
def score_variant(
    source: Path,
    variant: Variant,
    datasets: list[str],
    preset: str = "ablation",
    limit: int | None = None,
    crop: int | None = None,
) -> dict[str, dict[str, float]]:
    """Mean PSNR (dB) per dataset -> {dataset: {restored_psnr, input_psnr, restored_colour_fit_psnr,
    input_colour_fit_psnr, images[, ceiling_psnr]}}; the ``colour_fit`` values are after
    :func:`colour_fit` (the error that is not global colour or tone).

    ``source``: a run folder or a model_store entry. ``crop``: score the centre ``crop`` x ``crop`` of each
    clean image (degraded with the same seed as the whole image) instead of the whole image.
    """
    if crop is not None and crop < 16:
        raise ConfigError(f"crop {crop!r}: needs at least 16 pixels")
    system = _load(source, variant)
    out: dict[str, dict[str, float]] = {}
    for name in datasets:
        files = list_images(dataset_dir(name))[:limit]
        rows: dict[str, list[float]] = {
            key: [] for key in ("restored", "input", "restored_colour_fit", "input_colour_fit", "ceiling")
        }
        with_ceiling = variant in ("full", "no_pilot")
        for f in files:
            clean = load_rgb_batch(f)
            if crop is not None:
                clean = centre_crop(clean, crop)
            x = degrade_seeded(clean, preset, name, [f.name])
            restored = system.restore(x)
            rows["restored"].append(psnr(restored, clean)[0])
            rows["input"].append(psnr(x, clean)[0])
            rows["restored_colour_fit"].append(psnr(colour_fit(restored, clean), clean)[0])
            rows["input_colour_fit"].append(psnr(colour_fit(x, clean), clean)[0])
            if with_ceiling:
                rows["ceiling"].append(psnr(decoder_ceiling(system, clean), clean)[0])
        out[name] = {f"{key}_psnr": round(sum(v) / len(files), 3) for key, v in rows.items() if v}
        out[name]["images"] = len(files)
    return out


def scores_path(source: Path, preset: str = "ablation", crop: int | None = None) -> Path | None:
    """Where :func:`score_run` keeps a record: ``RUN/scores.json`` for the ``ablation`` protocol on whole
    images (the one ``dir-export`` reads), ``RUN/scores-<preset>[-crop<N>].json`` for any other; None for a
    model_store entry (its files are fixed by its manifest)."""
    if (source / "manifest.json").is_file():
        return None
    if preset == "ablation" and crop is None:
        return source / "scores.json"
    return source / f"scores-{preset}{'' if crop is None else f'-crop{crop}'}.json"


def score_run(
    source: Path,
    variants: list[Variant],
    datasets: list[str],
    preset: str = "ablation",
    limit: int | None = None,
    crop: int | None = None,
    out: Path | None = None,
) -> dict[str, Any]:
    """Score each variant of a run folder (or the full method of a model_store entry) and return the record.

    The record is merged into ``out`` when given, else into :func:`scores_path` (nothing is written for an
    entry without ``out``).
    """
    path = out or scores_path(source, preset, crop)
    record: dict[str, Any] = json.loads(path.read_text()) if path is not None and path.is_file() else {}
    if record and (record.get("protocol"), record.get("crop")) != (preset, crop):
        record = {}
    record["source"] = str(source)
    record["protocol"] = preset
    record["crop"] = crop
    record["seeding"] = "simulate(clean, preset, seed=[stable_seed(preset, dataset, filename)])"
    record.setdefault("psnr_db", {})
    for v in variants:
        record["psnr_db"][v] = score_variant(source, v, datasets, preset, limit, crop)
    record["paper_table5_psnr_db"] = PAPER_TABLE5_PSNR
    if path is not None:
        path.write_text(json.dumps(record, indent=2) + "\n")
    return record
