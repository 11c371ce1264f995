"""Throughput of the synthetic ISP: batched torch path vs the same pipeline image by image in NumPy.

Measures megapixels/s of the full degradation (inverse ISP, RAW noise, forward ISP, with and without JPEG)
for one batch (default 16 x 256x256, preset ``ablation``), and, interleaved in the same run on the same
parameters, :func:`training.isp.reference.degrade_image` looping over the images. Reports medians over the
repeats and the ratio batched / per-image. The headline uses ``--threads`` torch threads (default 1, like the
single-threaded NumPy path); on CPU the batched path is also timed, in the same interleaved loop, with
``--all-threads`` torch threads (default: all cores; 0 skips it). Rewrites its section of docs/BENCHMARKS.md
(between the ``isp_throughput`` markers) unless ``--no-write``.

    python -m benchmarks.isp_throughput --json [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable

import torch

from benchmarks.common import add_isp_arguments, check_device, cpu_model, write_section
from training.isp import get_preset, sample_params, stable_seed
from training.isp.pipeline import degrade
from training.isp.reference import degrade_image


def markers(device: str) -> tuple[str, str]:
    """The BENCHMARKS.md section markers for ``device``: CPU and CUDA results live in separate sections."""
    name = "isp_throughput_cuda" if device.startswith("cuda") else "isp_throughput"
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def timed(fn: Callable[[], object], sync: Callable[[], None]) -> float:
    """Seconds one call of ``fn`` takes, synchronising the device before and after."""
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def run(
    batch: int, size: int, preset: str, repeats: int, device: str, threads: int = 1, all_threads: int = 0
) -> dict[str, object]:
    """Measure all variants, interleaved, and return the numbers.

    Batched torch runs with ``threads`` intra-op threads; when ``all_threads`` is positive and differs from
    ``threads``, the batched variants are also timed with ``all_threads`` (suffix ``_all_threads``).
    """
    load_at_start = os.getloadavg()
    g = torch.Generator().manual_seed(0)
    clean_cpu = torch.rand(batch, 3, size, size, generator=g)
    clean = clean_cpu.to(device)
    images = [clean_cpu[i].permute(1, 2, 0).contiguous().numpy() for i in range(batch)]
    params = [sample_params(get_preset(preset), stable_seed("isp_throughput", i)) for i in range(batch)]
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def batched(jpeg: bool, n_threads: int) -> Callable[[], object]:
        def call() -> object:
            torch.set_num_threads(n_threads)
            return degrade(clean, params, jpeg=jpeg)

        return call

    def per_image(jpeg: bool) -> Callable[[], object]:
        def call() -> object:
            torch.set_num_threads(threads)
            return [degrade_image(im, p, jpeg=jpeg) for im, p in zip(images, params, strict=True)]

        return call

    variants: dict[str, Callable[[], object]] = {
        "batched_torch_jpeg": batched(True, threads),
        "batched_torch_no_jpeg": batched(False, threads),
        "per_image_numpy_jpeg": per_image(True),
        "per_image_numpy_no_jpeg": per_image(False),
    }
    multi = all_threads > 0 and all_threads != threads
    if multi:
        variants["batched_torch_jpeg_all_threads"] = batched(True, all_threads)
        variants["batched_torch_no_jpeg_all_threads"] = batched(False, all_threads)
    for fn in variants.values():
        timed(fn, sync)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            times[name].append(timed(fn, sync))
    torch.set_num_threads(threads)
    megapixels = batch * size * size / 1e6
    med = {k: statistics.median(v) for k, v in times.items()}
    result: dict[str, object] = {
        "batch": batch,
        "size": size,
        "preset": preset,
        "device": device,
        "repeats": repeats,
        "megapixels_per_batch": megapixels,
        "median_seconds": med,
        "min_seconds": {k: min(v) for k, v in times.items()},
        "megapixels_per_s": {k: megapixels / v for k, v in med.items()},
        "ratio_with_jpeg": med["per_image_numpy_jpeg"] / med["batched_torch_jpeg"],
        "ratio_without_jpeg": med["per_image_numpy_no_jpeg"] / med["batched_torch_no_jpeg"],
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": threads,
        "all_threads": all_threads if multi else None,
        "load_average_at_start": load_at_start,
        "load_average_at_end": os.getloadavg(),
        "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
        "torch": torch.__version__,
    }
    if multi:
        result["ratio_with_jpeg_all_threads"] = (
            med["per_image_numpy_jpeg"] / med["batched_torch_jpeg_all_threads"]
        )
        result["ratio_without_jpeg_all_threads"] = (
            med["per_image_numpy_no_jpeg"] / med["batched_torch_no_jpeg_all_threads"]
        )
    return result


def markdown(r: dict[str, object], command: str) -> str:
    """The BENCHMARKS.md section for result ``r``."""
    start, end = markers(str(r["device"]))
    mps = r["megapixels_per_s"]
    med = r["median_seconds"]
    assert isinstance(mps, dict) and isinstance(med, dict)
    load = ", ".join(f"{v:.2f}" for v in r["load_average_at_start"])  # type: ignore[attr-defined]
    load_end = ", ".join(f"{v:.2f}" for v in r["load_average_at_end"])  # type: ignore[attr-defined]
    threads, all_threads = r["torch_threads"], r["all_threads"]
    labels = {
        "batched_torch_no_jpeg": f"batched torch, {threads} thread(s), no JPEG",
        "per_image_numpy_no_jpeg": "per-image NumPy, no JPEG",
        "batched_torch_jpeg": f"batched torch, {threads} thread(s), JPEG",
        "per_image_numpy_jpeg": "per-image NumPy, JPEG",
        "batched_torch_no_jpeg_all_threads": f"batched torch, {all_threads} threads, no JPEG",
        "batched_torch_jpeg_all_threads": f"batched torch, {all_threads} threads, JPEG",
    }
    rows = [
        f"| {label} | {med[name] * 1000:.1f} | {mps[name]:.2f} |"
        for name, label in labels.items()
        if name in med
    ]
    multi = (
        [
            "",
            f"Second measurement, same run and loop: batched torch with {all_threads} threads (all cores; "
            "the JPEG stage then also encodes on that many threads) against the same single-threaded "
            f"per-image path: **{r['ratio_without_jpeg_all_threads']:.2f}x** without JPEG, "
            f"**{r['ratio_with_jpeg_all_threads']:.2f}x** with JPEG.",
        ]
        if all_threads
        else []
    )
    gpu = (
        f"GPU: {r['gpu']}."
        if r["gpu"]
        else "GPU: none in this run; GPU numbers, when a session had one, are in the CUDA section below."
    )
    return "\n".join(
        [
            start,
            "## ISP simulator throughput (`benchmarks/isp_throughput.py`)",
            "",
            f"Machine: {r['cpu']}, {r['cpu_cores']} cores, torch {r['torch']}, torch threads "
            f"{threads} (the per-image NumPy path is single-threaded; `--threads` sets "
            f"torch's), device `{r['device']}`; load average at start {load}, at end {load_end} (the machine "
            "is shared with other jobs, so numbers vary run to run). " + gpu,
            "",
            f"Command: `{command}`",
            "",
            f"Batch of {r['batch']} x {r['size']}x{r['size']}, preset `{r['preset']}`, median of "
            f"{r['repeats']} interleaved repeats. The per-image path is `training/isp/reference.py` "
            "(NumPy/SciPy, one image at a time, same parameters).",
            "",
            "| variant | ms per batch | megapixels/s |",
            "|---|---:|---:|",
            *rows,
            "",
            f"Ratio batched / per-image ({threads} torch thread(s), the headline): "
            f"**{r['ratio_without_jpeg']:.2f}x** without JPEG, **{r['ratio_with_jpeg']:.2f}x** with JPEG "
            "(target >= 5x on CPU).",
            *multi,
            end,
        ]
    )


def publish(result: dict[str, object], section: str, write: bool, as_json: bool) -> None:
    """Write ``section`` into docs/BENCHMARKS.md when ``write``; print ``result`` as JSON or the section."""
    if write:
        write_section(section)
    print(json.dumps(result, indent=2) if as_json else section)


def main(argv: list[str] | None = None) -> int:
    """CLI entry: measure, print (JSON with ``--json``) and update docs/BENCHMARKS.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_isp_arguments(parser, device="cpu", batch=16, size=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (default 1, like the NumPy path)"
    )
    parser.add_argument(
        "--all-threads",
        type=int,
        default=os.cpu_count() or 1,
        help="also time the batched path with this many torch threads on CPU (default all cores; 0 skips)",
    )
    parser.add_argument("--no-write", action="store_true", help="do not touch docs/BENCHMARKS.md")
    args = parser.parse_args(argv)
    check_device(parser, args.device)
    torch.set_num_threads(args.threads)
    all_threads = 0 if args.device.startswith("cuda") else args.all_threads
    result = run(args.batch, args.size, args.preset, args.repeats, args.device, args.threads, all_threads)
    command = "python -m benchmarks.isp_throughput " + shlex.join(sys.argv[1:] if argv is None else argv)
    publish(result, markdown(result, command.strip()), write=not args.no_write, as_json=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
