"""``dir-export SOURCE --to model_store/dir-restore/VERSION/``: ONNX graphs + manifest for the service.

SOURCE is a dir-train run folder (stage2.pt + config.yaml) or an existing model_store entry (manifest.json),
which is re-exported from its own weights with the current exporter's graphs.

``dir-export quantize ENTRY --to NEW_ENTRY``: a new entry version serving static int8 graphs of ENTRY
(:mod:`training.export.quantize`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from modelstore.manifest import MANIFEST_NAME, TileSpec
from training.errors import DiRError
from training.export.onnx_export import DEFAULT_TILE, export_entry, export_run
from training.export.quantize import main as quantize_main


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``dir-export``; returns the exit code (2 on a DiR error). ``dir-export quantize ...``
    writes an int8 entry (:mod:`training.export.quantize`)."""
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["quantize"]:
        return quantize_main(args_in[1:])
    p = argparse.ArgumentParser(
        prog="dir-export",
        description="Export a trained DiR run to a model_store entry.",
        epilog="dir-export quantize ENTRY --to NEW_ENTRY writes int8 graphs (dir-export quantize --help)",
    )
    p.add_argument(
        "source",
        type=Path,
        help="run folder holding stage2.pt and config.yaml, or a model_store entry folder to re-export",
    )
    p.add_argument("--to", type=Path, required=True, help="entry folder, e.g. model_store/dir-restore/1.0.0")
    p.add_argument("--version", help="version string (default: the entry folder's name)")
    p.add_argument(
        "--tile-size", type=int, help="serving tile side in pixels (default: the entry's, for a run 256)"
    )
    p.add_argument(
        "--tile-overlap", type=int, help="serving tile overlap in pixels (default: the entry's, for a run 32)"
    )
    p.add_argument(
        "--denoiser",
        type=Path,
        metavar="DENOISE_PT",
        help="with an entry SOURCE: the denoise.pt of dir-train denoise --init-from SOURCE, whose denoiser "
        "then drives the denoise graph",
    )
    args = p.parse_args(args_in)
    from_entry = (args.source / MANIFEST_NAME).is_file()
    tile: TileSpec | None = None
    if args.tile_size is not None or args.tile_overlap is not None or not from_entry:
        try:
            tile = TileSpec(
                size=DEFAULT_TILE.size if args.tile_size is None else args.tile_size,
                overlap=DEFAULT_TILE.overlap if args.tile_overlap is None else args.tile_overlap,
            )
        except ValueError as exc:
            p.error(f"bad tile: {exc}")
    version = args.version or args.to.name
    if args.denoiser is not None and not from_entry:
        p.error("--denoiser goes with an entry SOURCE; a run folder's own denoise.pt is used by itself")
    try:
        if from_entry:
            report = export_entry(args.source, args.to, version, tile, args.denoiser)
        else:
            report = export_run(args.source, args.to, version, tile or DEFAULT_TILE)
    except DiRError as exc:
        print(f"dir-export: error: {exc}", file=sys.stderr)
        return 2
    for name, err in report.parity_max_abs.items():
        print(f"{name}: onnx.checker ok, max-abs error vs PyTorch {err:.2e}")
    print(report.entry_dir / "manifest.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
