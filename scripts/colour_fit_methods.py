"""How much of each method's gain is global colour and how much is detail? PSNR before and after a colour fit.

docs/log/2026-11-27-colour-fit-diagnostic.md splits the `ablation` protocol's error into a global part
(exposure, white balance, gamma, tone: what one affine map of RGB fitted to the clean image removes,
``training.colour.colour_fit``) and the rest (noise, JPEG, blur, local colour). ``dir-train score`` does
this for DiR models; this script does it for any ``dir-eval`` method, peers included, on the same inputs
(``training.evaluate.protocols.synthetic_samples``: one ``stable_seed(preset, dataset, file name)`` per
image). Each method restores each degraded image ``(1, 3, H, W)`` sRGB in [0, 1]; the script prints, per
dataset and method, the mean PSNR (dB) of the output and of its colour-fitted version.

The colour fit reads the clean image: it is a diagnostic, not a method.

    python scripts/colour_fit_methods.py --datasets cset14 bsd100 \\
        --methods identity,dncnn,ffdnet,ffdnet-oracle,onnx,onnx-pilot [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json

import torch
from tqdm import tqdm

from training.colour import colour_fit
from training.evaluate.methods import MethodContext, resolve_methods
from training.evaluate.metrics import psnr
from training.evaluate.protocols import synthetic_samples


def score(datasets: list[str], methods: str, preset: str) -> dict[str, dict[str, dict[str, float]]]:
    """``{dataset: {method: {"psnr": dB, "colour_fit_psnr": dB, "images": n}}}``, means over the images."""
    specs = resolve_methods(methods)
    results: dict[str, dict[str, dict[str, float]]] = {}
    for dataset in datasets:
        samples = synthetic_samples(preset, dataset)
        results[dataset] = {}
        for spec in specs:
            bound = spec.bind(MethodContext())
            raw: list[float] = []
            fitted: list[float] = []
            for sample in tqdm(samples, desc=f"{dataset} {spec.name}", leave=False):
                assert sample.clean is not None
                with torch.no_grad():
                    restored = bound(sample.degraded, sample.clean).clamp(0.0, 1.0)
                raw += psnr(restored, sample.clean)
                fitted += psnr(colour_fit(restored, sample.clean), sample.clean)
            row = {"psnr": sum(raw) / len(raw), "colour_fit_psnr": sum(fitted) / len(fitted)}
            results[dataset][spec.name] = {**row, "images": float(len(raw))}
            fit = row["colour_fit_psnr"]
            tqdm.write(f"{dataset:8s} {spec.name:14s} {row['psnr']:6.2f} dB  colour fitted {fit:6.2f} dB")
    return results


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments, score, print a line per (dataset, method) and optionally write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["cset14", "bsd100"])
    parser.add_argument("--methods", default="identity,dncnn,ffdnet,ffdnet-oracle,onnx,onnx-pilot")
    parser.add_argument("--preset", default="ablation", help="ISP preset of the synthetic protocol")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    results = score(args.datasets, args.methods, args.preset)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
