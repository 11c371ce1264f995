"""Time the ISP's batched path without JPEG, for A/B runs of two source trees on one machine.

The tree is whichever ``training`` package Python imports, so an older checkout is timed with
``PYTHONPATH=OLD_CHECKOUT``. Run the two trees alternately in separate processes, several times each, in one
session on one machine (GPU clocks and neighbours drift between machines and minutes); each run prints one
JSON line with the median and fastest call and the sha256 of the output, which must be equal across trees
when a change is meant to be bit-identical.

    PYTHONPATH=/tmp/old python -m benchmarks.isp_ab --label old --device cuda
    PYTHONPATH=$PWD python -m benchmarks.isp_ab --label new --device cuda
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time

import torch

from benchmarks.common import add_isp_arguments, check_device
from training.isp import get_preset, sample_params, stable_seed
from training.isp.pipeline import degrade


def measure(batch: int, size: int, preset: str, device: str, warmup: int, calls: int) -> dict[str, object]:
    """Median and fastest seconds of ``degrade(clean, params, jpeg=False)`` and the output's sha256.

    ``clean`` is ``(batch, 3, size, size)`` uniform noise in ``[0, 1]`` (sRGB) drawn from seed 0; the
    parameters are those of ``benchmarks/isp_throughput.py`` (``stable_seed("isp_throughput", i)``).
    """
    clean = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    params = [sample_params(get_preset(preset), stable_seed("isp_throughput", i)) for i in range(batch)]
    cuda = device.startswith("cuda")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    out = clean
    for _ in range(warmup):
        out = degrade(clean, params, jpeg=False).degraded
    times = []
    for _ in range(calls):
        sync()
        t0 = time.perf_counter()
        out = degrade(clean, params, jpeg=False).degraded
        sync()
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    return {
        "median_ms": median * 1e3,
        "min_ms": min(times) * 1e3,
        "gigapixels_per_s": batch * size * size / 1e9 / median,
        "sha256": hashlib.sha256(out.cpu().numpy().tobytes()).hexdigest(),
    }


def main(argv: list[str] | None = None) -> int:
    """CLI entry: print one JSON line for the tree on ``PYTHONPATH``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", default="tree", help="name printed with the result (old, new, ...)")
    add_isp_arguments(parser, device="cuda", batch=64, size=512)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--calls", type=int, default=15)
    args = parser.parse_args(argv)
    check_device(parser, args.device)
    result = measure(args.batch, args.size, args.preset, args.device, args.warmup, args.calls)
    print(json.dumps({"label": args.label, "device": args.device, **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
