"""``dir-export RUN --to model_store/dir-restore/VERSION/``: ONNX graphs + manifest for the service."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from training.train.errors import DiRError


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``dir-export``; returns the exit code (2 on a DiR error)."""
    p = argparse.ArgumentParser(
        prog="dir-export", description="Export a trained DiR run to a model_store entry."
    )
    p.add_argument("run", type=Path, help="run folder holding stage2.pt and config.yaml")
    p.add_argument("--to", type=Path, required=True, help="entry folder, e.g. model_store/dir-restore/1.0.0")
    p.add_argument("--version", help="version string (default: the entry folder's name)")
    p.add_argument("--tile-size", type=int, default=256, help="serving tile side in pixels (manifest)")
    p.add_argument("--tile-overlap", type=int, default=32, help="serving tile overlap in pixels")
    args = p.parse_args(argv)
    from service.manifest import TileSpec
    from training.export.onnx_export import export_run

    try:
        tile = TileSpec(size=args.tile_size, overlap=args.tile_overlap)
    except ValueError as exc:
        p.error(f"bad tile: {exc}")
    try:
        report = export_run(args.run, args.to, args.version or args.to.name, tile)
    except DiRError as exc:
        print(f"dir-export: error: {exc}", file=sys.stderr)
        return 2
    for name, err in report.parity_max_abs.items():
        print(f"{name}: onnx.checker ok, max-abs error vs PyTorch {err:.2e}")
    print(report.entry_dir / "manifest.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
