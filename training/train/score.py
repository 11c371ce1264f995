"""PSNR of a trained run on the paper's ``ablation`` protocol (Table 5): cset14 and bsd100.

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

from training.models import DiRSystem, Variant, load_system
from training.paths import dataset_dir
from training.train.data import list_images, load_rgb
from training.train.metrics import psnr

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


@torch.no_grad()
def score_variant(
    run: Path, variant: Variant, datasets: list[str], preset: str = "ablation", limit: int | None = None
) -> dict[str, dict[str, float]]:
    """Mean PSNR (dB) per dataset -> {dataset: {restored_psnr, input_psnr, images[, ceiling_psnr]}}."""
    from training.isp import simulate, stable_seed

    system = load_system(run, variant)
    out: dict[str, dict[str, float]] = {}
    for name in datasets:
        files = list_images(dataset_dir(name))[:limit]
        restored_db, input_db, ceiling_db = [], [], []
        with_ceiling = variant in ("full", "no_pilot")
        for f in files:
            clean = load_rgb(f).float().div(255.0).unsqueeze(0)
            x = simulate(clean, preset=preset, seed=[stable_seed(preset, name, f.name)]).degraded
            restored_db.append(float(psnr(system.restore(x), clean)))
            input_db.append(float(psnr(x, clean)))
            if with_ceiling:
                ceiling_db.append(float(psnr(decoder_ceiling(system, clean), clean)))
        out[name] = {
            "restored_psnr": round(sum(restored_db) / len(files), 3),
            "input_psnr": round(sum(input_db) / len(files), 3),
            "images": len(files),
        }
        if with_ceiling:
            out[name]["ceiling_psnr"] = round(sum(ceiling_db) / len(files), 3)
    return out


def score_run(
    run: Path,
    variants: list[Variant],
    datasets: list[str],
    preset: str = "ablation",
    limit: int | None = None,
) -> dict[str, Any]:
    """Score each variant, merge into ``run/scores.json`` (read by ``dir-export``) and return the record."""
    path = run / "scores.json"
    record: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    record["protocol"] = preset
    record["seeding"] = "simulate(clean, preset, seed=[stable_seed(preset, dataset, filename)])"
    record.setdefault("psnr_db", {})
    for v in variants:
        record["psnr_db"][v] = score_variant(run, v, datasets, preset, limit)
    record["paper_table5_psnr_db"] = PAPER_TABLE5_PSNR
    path.write_text(json.dumps(record, indent=2) + "\n")
    return record
