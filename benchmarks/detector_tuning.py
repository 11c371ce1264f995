"""Would fine-tuning the detector alone do? The detector stage of ``dir-train align --detector-mode joint``
(:mod:`training.train.align.detector_stage`: T distilled on renderings towards its own outputs on the clean
images) run through any ``dir-eval`` method instead of an aligned entry's path, then scored like the
``detect`` protocol: coco128_val degraded by ``default-isp``, passed through the same method, detected by
the installed detector before and after tuning (pycocotools mAP).

``identity`` is the baseline a user would try first: the detector fine-tuned on the degraded images
themselves, no restoration. Results: docs/log/2026-12-05-align-detect-joint-cpu.md.

    PYTHONPATH=$PWD .venv/bin/python -m benchmarks.detector_tuning --through identity,onnx-denoise,onnx
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from modelstore.detector import Detector, find_detector, load_detector
from training.detect.coco_map import coco128_dirs, evaluate_detector
from training.detect.install import install_yolo_fastestv2
from training.evaluate.detect import DegradedCache
from training.evaluate.methods import MethodContext, get_method
from training.evaluate.methods.base import BoundMethod
from training.train.align.config import DetectorStage
from training.train.align.data import load_labelled, resolve_images
from training.train.align.detector import load_torch_detector
from training.train.align.detector_stage import render_set, stage_step
from training.train.config import StageConfig


def _score(detector: Detector, method: BoundMethod, cache: DegradedCache) -> dict[str, float]:
    """mAP of ``detector`` on coco128_val degraded by the cache's preset and passed through ``method``."""
    images, labels = coco128_dirs()

    def transform(image: np.ndarray) -> np.ndarray:
        clean, degraded = cache.get(image)
        out = method(degraded, clean)[0].permute(1, 2, 0).clamp(0, 1).numpy()
        return (out * 255.0 + 0.5).astype(np.uint8)

    result = evaluate_detector(detector, images, labels, transform=transform)
    return {"map50": round(100 * result["map50"], 2), "map50_95": round(100 * result["map50_95"], 2)}


def tune_through(name: str, args: argparse.Namespace, cache: DegradedCache) -> dict[str, Any]:
    """Render the training set through method ``name``, tune the installed detector on it, score both."""
    store = Path(args.model_store)
    entry = find_detector(store)
    if entry is None:
        raise SystemExit(f"no detector under {store}: dir-models add-detector yolo-fastestv2 <weights>")
    method = get_method(name).bind(MethodContext(model_store=store))
    data = load_labelled([resolve_images(n) for n in args.images], None)
    cfg = DetectorStage(
        optim=StageConfig(steps=args.steps, lr=args.lr, lr_min=1e-6, warmup_steps=30, grad_clip=10.0),
        draws=args.draws,
    )
    torch.manual_seed(0)
    start = time.perf_counter()
    renderings = render_set(data, lambda x: method(x, None), "default-isp", cfg.draws, 0, True)
    rendered_s = time.perf_counter() - start
    det = load_torch_detector(entry)
    detector = det.module.requires_grad_(True)
    teacher = copy.deepcopy(detector).requires_grad_(False)
    optimizer = torch.optim.Adam(detector.parameters(), lr=cfg.optim.lr)
    for step in tqdm(range(cfg.optim.steps), desc=f"tune:{name}"):
        stage_step(detector, teacher, optimizer, renderings, data, cfg, det.manifest, 1, step)
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "tuned.pt"
        torch.save(detector.state_dict(), weights)
        names = [str(n) for n in det.manifest.extra["class_names"]]
        tuned = install_yolo_fastestv2(weights, Path(tmp), name="tuned", class_names=names)
        after = _score(load_detector(tuned, providers=["CPUExecutionProvider"]), method, cache)
    before = _score(load_detector(entry, providers=["CPUExecutionProvider"]), method, cache)
    return {
        "through": name,
        "before": before,
        "after": after,
        "renderings": len(renderings),
        "steps": cfg.optim.steps,
        "render_s": round(rendered_s),
        "total_s": round(time.perf_counter() - start),
    }


def main(argv: list[str] | None = None) -> int:
    """Print a Markdown table (and write ``--json``) of mAP@0.5 before / after tuning per method."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--through", default="identity", help="comma-separated dir-eval methods")
    p.add_argument("--images", nargs="+", default=["coco128_train", "bsds500_train"])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument("--draws", type=int, default=1)
    p.add_argument("--model-store", default="model_store")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    cache = DegradedCache("default-isp")
    rows = [tune_through(name.strip(), args, cache) for name in args.through.split(",")]
    print("| through | mAP@0.5 before | after | mAP@0.5:0.95 before | after | renderings | steps | s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        b, a = r["before"], r["after"]
        print(
            f"| {r['through']} | {b['map50']} | {a['map50']} | {b['map50_95']} | {a['map50_95']} "
            f"| {r['renderings']} | {r['steps']} | {r['total_s']} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
