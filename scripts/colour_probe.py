"""Can the `ablation` protocol's global colour error be removed blind? PSNR of classical colour corrections.

docs/log/2026-11-27-colour-fit-diagnostic.md measures the protocol's global colour and tone error with an
oracle affine fit to the clean image: 4 dB. This script asks how much of it blind corrections remove. It
degrades each image exactly as ``dir-train score`` and ``dir-eval`` do, applies each correction to the
degraded sRGB ``(1, 3, H, W)`` in [0, 1], and prints the mean PSNR (dB) per dataset:

- ``grey_world``: each channel scaled so its mean equals the mean of the three channel means;
- ``moments``: each channel's mean and standard deviation set to those of clean training images
  (``bsds500_train``, every 4th image, the 4 held-out images excluded);
- ``grey_world_luma``: grey world, then one gain and offset for all channels to the training images'
  overall mean and standard deviation.

    python scripts/colour_probe.py [--datasets cset14 bsd100] [--preset ablation]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

import torch

from training.data import degrade_seeded, load_rgb, load_rgb_batch
from training.evaluate.metrics import psnr
from training.paths import dataset_dir
from training.train.data import list_images

Correction = Callable[[torch.Tensor], torch.Tensor]


def training_moments(step: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean per-channel mean and standard deviation ``(3,)`` each of clean ``bsds500_train`` images."""
    files = list_images(dataset_dir("bsds500_train"))[:-4:step]
    images = [load_rgb(f).float().div(255.0) for f in files]
    means = torch.stack([x.mean(dim=(1, 2)) for x in images]).mean(0)
    stds = torch.stack([x.std(dim=(1, 2)) for x in images]).mean(0)
    return means, stds


def corrections(mean: torch.Tensor, std: torch.Tensor) -> dict[str, Correction]:
    """The blind corrections, each ``(1, 3, H, W)`` sRGB [0, 1] -> the same shape, clipped to [0, 1]."""

    def grey_world(x: torch.Tensor) -> torch.Tensor:
        m = x.mean(dim=(2, 3), keepdim=True)
        return (x * m.mean(1, keepdim=True) / m.clamp_min(1e-4)).clamp(0.0, 1.0)

    def moments(x: torch.Tensor) -> torch.Tensor:
        m, s = x.mean(dim=(2, 3), keepdim=True), x.std(dim=(2, 3), keepdim=True)
        return ((x - m) / s.clamp_min(1e-4) * std.view(1, 3, 1, 1) + mean.view(1, 3, 1, 1)).clamp(0.0, 1.0)

    def grey_world_luma(x: torch.Tensor) -> torch.Tensor:
        g = grey_world(x)
        return ((g - g.mean()) / g.std().clamp_min(1e-4) * std.mean() + mean.mean()).clamp(0.0, 1.0)

    return {"grey_world": grey_world, "moments": moments, "grey_world_luma": grey_world_luma}


def main(argv: list[str] | None = None) -> int:
    """CLI entry: print ``{dataset: {input, correction...}}`` mean PSNR (dB) as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["cset14", "bsd100"])
    parser.add_argument("--preset", default="ablation")
    args = parser.parse_args(argv)
    fixes = corrections(*training_moments())
    result: dict[str, dict[str, float]] = {}
    for name in args.datasets:
        rows: dict[str, list[float]] = {"input": [], **{k: [] for k in fixes}}
        for f in list_images(dataset_dir(name)):
            clean = load_rgb_batch(f)
            x = degrade_seeded(clean, args.preset, name, [f.name])
            rows["input"].append(psnr(x, clean)[0])
            for key, fix in fixes.items():
                rows[key].append(psnr(fix(x), clean)[0])
        result[name] = {k: round(sum(v) / len(v), 2) for k, v in rows.items()}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
