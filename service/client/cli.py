"""``dir``: command-line front end of the DiR-ISP client.

Exit status: 0 success, 1 a request failed, 2 bad usage, 3 the server could not be reached, 130 interrupted
(Ctrl-C; the images' jobs are cancelled first).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from service.client.async_client import AsyncDirClient
from service.client.client import DirClient
from service.client.errors import DirClientError, ServerUnavailableError
from service.client.jobs import DEFAULT_JOB_ABOVE_MP
from service.client.protocol import DEFAULT_URL
from service.client.results import Detection, DetectResult

EXIT_FAILED = 1
EXIT_UNAVAILABLE = 3
EXIT_INTERRUPTED = 130


def _megapixels(text: str) -> float:
    """``--job-above``: a number of megapixels, 0 or more (``inf`` for never)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of megapixels") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: megapixels must be 0 or more (inf: never)")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dir", description="Client for the DiR-ISP restoration service.")
    parser.add_argument(
        "--url", default=os.environ.get("DIR_URL", DEFAULT_URL), help="server URL (env DIR_URL)"
    )
    parser.add_argument(
        "--api-key", default=os.environ.get("DIR_API_KEY"), help="bearer token (env DIR_API_KEY)"
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request attempt")
    sub = parser.add_subparsers(dest="command", required=True)

    restore = sub.add_parser("restore", help="restore camera images into OUTDIR")
    restore.add_argument("inputs", nargs="+", type=Path, metavar="IN")
    restore.add_argument("-o", "--out", required=True, type=Path, metavar="OUTDIR")
    restore.add_argument("--format", choices=("png", "jpeg"), default="png", dest="fmt")
    restore.add_argument(
        "--mode",
        choices=("full", "denoise"),
        help="full: DiR restoration, corrects colour/tone too; denoise: keeps the camera's colour and tone "
        "(default: the server's, see 'dir models')",
    )
    restore.add_argument("-j", "--jobs", type=int, default=4, help="requests in flight at once")

    represent = sub.add_parser("represent", help="save the DiR representation of IN as .npy")
    represent.add_argument("input", type=Path, metavar="IN")
    represent.add_argument("-o", "--out", required=True, type=Path, metavar="OUT.npy")
    represent.add_argument(
        "--output", choices=("r_plus", "r0", "pilot"), default="r_plus", help="which array"
    )

    detect = sub.add_parser("detect", help="detect objects on the restored image")
    detect.add_argument("input", type=Path, metavar="IN")
    detect.add_argument("--json", action="store_true", help="print the server's JSON answer")
    detect.add_argument("--compare", action="store_true", help="also detect on the unrestored input")
    detect.add_argument(
        "--mode", choices=("full", "denoise"), help="restore mode before the detector (default: the server's)"
    )

    for command in (restore, represent, detect):
        command.add_argument(
            "--job-above",
            type=_megapixels,
            default=DEFAULT_JOB_ABOVE_MP,
            metavar="MP",
            help="send images above MP megapixels as jobs, with a tile progress bar each (0: every image; "
            f"inf: none; default {DEFAULT_JOB_ABOVE_MP:g})",
        )
        command.add_argument("--no-progress", action="store_true", help="hide the progress bars")
        command.add_argument(
            "--model",
            help="served restoration entry, 'name' or 'name/version' (default: the server's; 'dir models')",
        )

    sub.add_parser("models", help="list the models the server has loaded")
    return parser


class _TileBar:
    """``progress(tiles_done, tiles_total)`` of one image sent as a job: a tqdm bar of its tiles, opened at
    the first report (an image sent synchronously never reports, so gets no bar) and removed when closed."""

    def __init__(self, name: str, disable: bool) -> None:
        self.name = name
        self.disable = disable
        self.bar: tqdm[None] | None = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.name, unit="tile", leave=False, disable=self.disable)
        self.bar.total = total
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        """Remove the bar (if one was opened)."""
        if self.bar is not None:
            self.bar.close()


async def _restore_all(args: argparse.Namespace) -> int:
    """Restore every input with at most ``--jobs`` requests in flight; returns the exit status."""
    args.out.mkdir(parents=True, exist_ok=True)
    gate = asyncio.Semaphore(max(1, args.jobs))
    failures = 0
    bar = tqdm(total=len(args.inputs), unit="img", disable=args.no_progress or len(args.inputs) < 2)

    async def one(client: AsyncDirClient, path: Path) -> None:
        nonlocal failures
        async with gate:
            tiles = _TileBar(path.name, args.no_progress)
            try:
                result = await client.restore(
                    path,
                    fmt=args.fmt,
                    mode=args.mode,
                    model=args.model,
                    job_above=args.job_above,
                    progress=tiles,
                )
            except ServerUnavailableError:
                raise
            except DirClientError as exc:
                failures += 1
                tqdm.write(f"{path}: {exc.message}", file=sys.stderr)
            else:
                result.save(args.out / f"{path.stem}{result.extension}")
            finally:
                tiles.close()
            bar.update(1)

    async with AsyncDirClient(args.url, api_key=args.api_key, timeout=args.timeout) as client:
        tasks = [asyncio.create_task(one(client, p)) for p in args.inputs]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            # the cancelled tasks DELETE their jobs: let them finish before the client closes
            await asyncio.gather(*tasks, return_exceptions=True)
            bar.close()
    if failures:
        print(f"{failures} of {len(args.inputs)} images failed", file=sys.stderr)
        return EXIT_FAILED
    print(f"restored {len(args.inputs)} image(s) into {args.out}")
    return 0


def _format_detections(result: DetectResult) -> str:
    """A plain-text table of detections."""

    def rows(title: str, items: list[Detection]) -> list[str]:
        lines = [f"{title}: {len(items)} object(s)"]
        for d in items:
            box = ", ".join(f"{v:.0f}" for v in d.box)
            lines.append(f"  {d.class_name:<16} {d.score:5.2f}  [{box}]")
        return lines

    lines = rows("restored", result.detections)
    if result.unrestored is not None:
        lines += rows("unrestored", result.unrestored)
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    if args.command == "restore":
        return asyncio.run(_restore_all(args))
    with DirClient(args.url, api_key=args.api_key, timeout=args.timeout) as client:
        if args.command == "models":
            print(json.dumps(client.models(), indent=2))
            return 0
        tiles = _TileBar(args.input.name, args.no_progress)
        try:
            if args.command == "represent":
                rep = client.represent(
                    args.input, output=args.output, model=args.model, job_above=args.job_above, progress=tiles
                )
                rep.save(args.out)
                print(f"{args.out}: shape {tuple(rep.array.shape)} dtype {rep.array.dtype}")
            else:
                result = client.detect(
                    args.input,
                    compare=args.compare,
                    mode=args.mode,
                    model=args.model,
                    job_above=args.job_above,
                    progress=tiles,
                )
                print(json.dumps(result.raw, indent=2) if args.json else _format_detections(result))
        finally:
            tiles.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dir`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except ServerUnavailableError as exc:
        print(
            f"error: {exc.message}\nIs the server running? Start it with `dir-serve` (or `docker compose up`)"
            " and pass its address with --url or DIR_URL.",
            file=sys.stderr,
        )
        return EXIT_UNAVAILABLE
    except DirClientError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted: the jobs still running were cancelled", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
