"""dir-isp: degrade images with the synthetic camera ISP, or write a contact sheet of its stages.

Per-image seeds are ``stable_seed(seed, file name)``, so an image is degraded the same way whether it is
given alone or inside a folder. ``--params`` writes the drawn :class:`ISPParams` as JSON (an object keyed by
file name), enough to reproduce every output with ``simulate(clean, params=...)``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from training.isp.errors import ISPError
from training.isp.jpeg import to_uint8
from training.isp.pipeline import SimResult, degrade, simulate
from training.isp.presets import PRESETS, get_preset
from training.isp.sampler import sample_params, stable_seed
from training.isp.sheet import contact_sheet

log = logging.getLogger("dir-isp")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
JPEG_SUFFIXES = (".jpg", ".jpeg")


def load_srgb(path: Path, device: str = "cpu") -> torch.Tensor:
    """Read an image file as a ``(1, 3, H, W)`` float32 sRGB tensor in ``[0, 1]``."""
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except OSError as e:
        raise ISPError(f"cannot read image {path}: {e}") from e
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).contiguous().to(device)


def save_result(result: SimResult, out: Path) -> None:
    """Write image 0 of ``result``: PNG losslessly, or for ``.jpg`` the JPEG bytes the simulator decoded.

    For a ``.jpg`` output ``result.degraded`` must be the pre-JPEG image (``jpeg=False``) while
    ``result.params`` keep the drawn quality: it is encoded once at that quality, exactly what the JPEG stage
    decodes. When the image drew no JPEG the file is written at quality 100, 4:4:4 (a warning says so).
    """
    rgb = to_uint8(result.degraded[0])
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() in JPEG_SUFFIXES:
        q = result.params[0].jpeg_quality
        if q is None:
            log.warning("%s: the drawn parameters have no JPEG stage; writing quality 100, 4:4:4", out)
            Image.fromarray(rgb).save(out, format="JPEG", quality=100, subsampling=0)
        else:
            Image.fromarray(rgb).save(out, format="JPEG", quality=q, subsampling=2)
    else:
        Image.fromarray(rgb).save(out)


def _simulate_file(src: Path, preset: str, seed: int, device: str, for_jpeg_file: bool) -> SimResult:
    """Degrade one file; for a JPEG output file the JPEG stage is left to :func:`save_result`."""
    clean = load_srgb(src, device)
    params = [sample_params(get_preset(preset), stable_seed(seed, src.name))]
    result = degrade(clean, params, jpeg=not for_jpeg_file)
    return replace(result, params=params)


def cmd_simulate(args: argparse.Namespace) -> int:
    """``dir-isp simulate``: one file -> one file, or a folder -> a folder."""
    src, dst = Path(args.input), Path(args.output)
    if src.is_dir():
        files = sorted(p for p in src.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ISPError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {src}")
        jobs = [(f, dst / f"{f.stem}.{args.format}") for f in files]
    elif src.is_file():
        jobs = [(src, dst)]
    else:
        raise ISPError(f"input {src} is neither an image file nor a folder")
    records = {}
    for f, out in tqdm(jobs, desc=f"dir-isp {args.preset}", unit="img", disable=len(jobs) == 1):
        res = _simulate_file(f, args.preset, args.seed, args.device, out.suffix.lower() in JPEG_SUFFIXES)
        save_result(res, out)
        records[f.name] = res.params[0].to_dict()
    if args.params:
        Path(args.params).parent.mkdir(parents=True, exist_ok=True)
        Path(args.params).write_text(json.dumps(records, indent=2, sort_keys=True) + "\n")
    log.info("wrote %d image(s) to %s", len(jobs), dst)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """``dir-isp show``: a contact sheet PNG of one image's stages."""
    src = Path(args.input)
    clean = load_srgb(src, args.device)
    res = simulate(clean, args.preset, seed=[stable_seed(args.seed, src.name)], keep_stages=True)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    contact_sheet(res, max_side=args.max_side).save(out, optimize=True)
    log.info("wrote contact sheet %s", out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``dir-isp`` argument parser."""
    parser = argparse.ArgumentParser(prog="dir-isp", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    presets = ", ".join(f"{k} ({v.description})" for k, v in PRESETS.items())

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--preset", default="ablation", choices=sorted(PRESETS), help=f"one of: {presets}")
        p.add_argument("--seed", type=int, default=0, help="base seed; image seed = stable_seed(seed, name)")
        p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")

    sim = sub.add_parser("simulate", help="degrade an image or a folder of images")
    sim.add_argument("input", help="image file or folder")
    sim.add_argument("output", help="output file (.png or .jpg) or folder")
    sim.add_argument("--params", help="write the drawn parameters here (JSON keyed by file name)")
    sim.add_argument("--format", default="png", choices=("png", "jpg"), help="output format in folder mode")
    common(sim)
    sim.set_defaults(func=cmd_simulate)

    show = sub.add_parser("show", help="contact sheet of the stages for one image")
    show.add_argument("input", help="image file")
    show.add_argument("-o", "--output", required=True, help="sheet PNG to write")
    show.add_argument("--max-side", type=int, default=256, help="longest side of each panel in pixels")
    common(show)
    show.set_defaults(func=cmd_show)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``dir-isp``; returns the exit status (2 on bad input, with the reason on stderr)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if str(args.device).startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA device is available")
    try:
        return int(args.func(args))
    except ISPError as e:
        print(f"dir-isp: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
