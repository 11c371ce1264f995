"""Restoration throughput of the DiR serving graph on one device: tiles/s and megapixels/s per precision.

Builds the full DiR system (DiRNet + DfRNet pilot -> A -> D*) of a training config with its initial
weights (speed does not depend on the weight values) and times batches of serving tiles (default 8 x 3 x
256 x 256 sRGB in [0, 1], the service's tile size) in PyTorch at fp32, bf16 autocast and fp16, and, with
``--onnx ENTRY``, the exported graph of a model_store entry in ONNX Runtime with the providers present.
Medians over ``--repeats`` timed batches after warm-up; prints JSON.

    python benchmarks/model_throughput.py --config default --device cuda --onnx model_store/dir-restore/2.0.0
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from training.models import DiRSystem
from training.train.config import load_config


def _median_seconds(fn: Callable[[], object], sync: Callable[[], None], repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def torch_variants(system: DiRSystem, tiles: torch.Tensor) -> dict[str, Callable[[], object]]:
    """fp32, bf16-autocast and fp16 forward passes of ``system`` on ``tiles`` (N, 3, T, T) in [0, 1]."""
    device = tiles.device
    half = DiRSystem(system.cfg, system.variant).to(device).eval()
    half.load_state_dict(system.state_dict())
    half = half.half()
    tiles_half = tiles.half()

    def fp32() -> object:
        return system(tiles)["restored"]

    def bf16() -> object:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return system(tiles)["restored"]

    def fp16() -> object:
        return half(tiles_half)["restored"]

    out: dict[str, Callable[[], object]] = {"torch_fp32": fp32, "torch_bf16_autocast": bf16}
    if device.type == "cuda":
        out["torch_fp16"] = fp16
    return out


def onnx_variant(entry: Path, tiles: np.ndarray) -> tuple[str, Callable[[], object]]:
    """An ONNX Runtime session on ``entry``'s serving graph (CUDA provider first when present)."""
    import onnxruntime as ort  # optional: onnxruntime, only with --onnx

    manifest = json.loads((entry / "manifest.json").read_text())
    providers = [
        p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()
    ]
    session = ort.InferenceSession(str(entry / manifest["onnx_file"]), providers=providers)
    feeds = {"image": tiles}
    extra = [i for i in session.get_inputs() if i.name != "image"]
    for spec in extra:
        width = int(spec.shape[1])
        feeds[spec.name] = np.zeros((tiles.shape[0], width), dtype=np.float32)
    name = f"onnxruntime_{session.get_providers()[0].removesuffix('ExecutionProvider').lower()}"
    return name, lambda: session.run(["restored"], feeds)


def main(argv: list[str] | None = None) -> int:
    """CLI entry: measure and print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="default", help="training config whose architecture is timed")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--onnx", type=Path, help="a model_store entry folder to time in ONNX Runtime too")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA device is available")
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    cfg = load_config(args.config)
    system = DiRSystem(cfg.model, "full").to(device).eval()
    tiles = torch.rand(args.batch, 3, args.tile, args.tile, generator=torch.Generator().manual_seed(0))
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    seconds: dict[str, float] = {}
    with torch.inference_mode():
        for name, fn in torch_variants(system, tiles.to(device)).items():
            seconds[name] = _median_seconds(fn, sync, args.repeats, args.warmup)
    if args.onnx is not None:
        name, fn = onnx_variant(args.onnx, tiles.numpy())
        seconds[name] = _median_seconds(fn, lambda: None, args.repeats, args.warmup)
    megapixels = args.batch * args.tile * args.tile / 1e6
    result = {
        "config": args.config,
        "parameters_m": round(sum(p.numel() for p in system.parameters()) / 1e6, 3),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "batch": args.batch,
        "tile": args.tile,
        "median_seconds": seconds,
        "tiles_per_s": {k: args.batch / v for k, v in seconds.items()},
        "megapixels_per_s": {k: megapixels / v for k, v in seconds.items()},
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
