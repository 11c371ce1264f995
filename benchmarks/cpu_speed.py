"""Per-tile CPU speed, side by side in one run: session options, int8 graphs and JPEG/PNG codecs.

For the entry's ``denoise.onnx`` (the default mode) and ``model.onnx`` (``full``, with ``guide_mean`` from
the fp32 ``guide.onnx``), on tiles of the service's sides (the manifest's ``tile.size`` and twice it),
one tile per call: today's fp32 session (:func:`modelstore.runner.make_session`, all graph optimisations)
at 2 and 1 intra-op threads, the other optimisation levels, the parallel execution mode, the service's
2-core split (two 1-thread calls at once), and the int8 graphs: static QDQ
(:func:`training.export.quantize.quantize_graph`, calibrated on 32 degraded training tiles) and dynamic
(``quantize_dynamic``). Variants are interleaved round by round; medians of ``--repeats`` rounds. Quality:
PSNR (dB, peak 1) of each variant's ``restored`` against today's fp32 on the same tile (degraded training
images, never evaluation ones).

Then 12 MP JPEG decode and JPEG/PNG encode with Pillow (the service), simplejpeg, OpenCV and PyTurboJPEG
(where libturbojpeg loads), and the default mode end to end in process (decode, tiles through the
service's ``RestoreModel`` as served on 2 cores, stitch, JPEG encode) for a 12 MP JPEG and a 512 px one,
fp32 entry against its int8 entry. ``--write-doc`` replaces the "Per-tile CPU speed" section of
docs/BENCHMARKS.md.

    nice python benchmarks/cpu_speed.py --entry model_store/dir-restore/3.3.0 --write-doc
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import QuantType, quantize_dynamic
from PIL import Image
from tqdm import tqdm

from benchmarks.codecs import codec_rows, photo_jpeg
from benchmarks.common import cpu_model, write_section
from modelstore.manifest import MANIFEST_NAME, Manifest
from modelstore.runner import make_session
from modelstore.store import ModelEntry
from service.imaging import decode_image, encode_image
from service.queue import DENOISE_GRAPH
from service.store import RestoreModel
from service.tiling import choose_tile, extract_tiles, stitch_tiles
from training.export.quantize import graph_feeds, quantize_entry, training_tiles

LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
}
Feed = dict[str, np.ndarray]


def options_session(
    path: Path, threads: int, level: str = "", parallel_mode: bool = False
) -> ort.InferenceSession:
    """Today's session options (``make_session``) with one of them changed: the optimisation ``level``, or
    the parallel execution mode with 2 inter-op threads."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 2 if parallel_mode else 1
    options.graph_optimization_level = LEVELS.get(level, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    if parallel_mode:
        options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def two_calls(session: ort.InferenceSession, feed: Feed, pool: ThreadPoolExecutor) -> Callable[[], object]:
    """Two single-tile calls at once on one 1-thread session (the service's default split on 2 cores)."""
    return lambda: list(pool.map(lambda _: session.run(["restored"], feed), range(2)))


def variants(
    graphs: dict[str, Path], feed: Feed, pool: ThreadPoolExecutor
) -> dict[str, tuple[Callable[[], object], int, ort.InferenceSession]]:
    """name -> (timed call, tiles it computes, its session) for one graph on one tile feed."""
    fp32, static, dynamic = graphs["fp32"], graphs["int8 static"], graphs["int8 dynamic"]
    sessions = {
        "fp32 today (all opts), 2 threads": (make_session(fp32, ["CPUExecutionProvider"], 2), 1),
        "fp32 today, 1 thread": (make_session(fp32, ["CPUExecutionProvider"], 1), 1),
        "fp32 opt disable, 2 threads": (options_session(fp32, 2, "disable"), 1),
        "fp32 opt basic, 2 threads": (options_session(fp32, 2, "basic"), 1),
        "fp32 opt extended, 2 threads": (options_session(fp32, 2, "extended"), 1),
        "fp32 parallel mode, 2+2 threads": (options_session(fp32, 2, parallel_mode=True), 1),
        "fp32 2 calls x 1 thread (served)": (make_session(fp32, ["CPUExecutionProvider"], 1), 2),
        "int8 static, 2 threads": (make_session(static, ["CPUExecutionProvider"], 2), 1),
        "int8 static, 1 thread": (make_session(static, ["CPUExecutionProvider"], 1), 1),
        "int8 static 2 calls x 1 thread": (make_session(static, ["CPUExecutionProvider"], 1), 2),
        "int8 dynamic, 2 threads": (make_session(dynamic, ["CPUExecutionProvider"], 2), 1),
    }
    out: dict[str, tuple[Callable[[], object], int, ort.InferenceSession]] = {}
    for name, (session, tiles) in sessions.items():
        call = two_calls(session, feed, pool) if tiles == 2 else (lambda s=session: s.run(["restored"], feed))
        out[name] = (call, tiles, session)
    return out


def interleaved(
    calls: dict[str, Callable[[], object]], repeats: int, label: str, warm: bool = True
) -> dict[str, float]:
    """Median seconds of each call over ``repeats`` rounds, every round running each call once (after one
    warm-up round where ``warm``), so a noisy machine slows every variant alike."""
    for call in calls.values() if warm else ():
        call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in tqdm(range(repeats), desc=label, leave=False):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB (peak 1) of ``b`` against ``a``, both clipped to [0, 1]; 99.0 where they agree."""
    mse = float(np.mean((np.clip(a, 0, 1) - np.clip(b, 0, 1)) ** 2))
    return 99.0 if mse < 1e-10 else 10.0 * float(np.log10(1.0 / mse))


def timed_tile(side: int, base: int) -> np.ndarray:
    """A ``(1, 3, side, side)`` degraded training tile: one of side ``base``, or a mosaic of such tiles
    (the training images are smaller than 512 px)."""
    per = -(-side // base)
    tiles = training_tiles(per * per, base, seed=2, skip=48)
    rows = [np.concatenate(tiles[r * per : (r + 1) * per], axis=3) for r in range(per)]
    return np.ascontiguousarray(np.concatenate(rows, axis=2)[..., :side, :side])


def int8_graphs(entry: Path, int8_entry: Path, work: Path) -> dict[str, dict[str, Path]]:
    """graph -> {"fp32", "int8 static", "int8 dynamic"} paths; the dynamic graphs are written to ``work``."""
    out = {}
    for graph in ("denoise.onnx", "model.onnx"):
        dynamic = work / graph.replace(".onnx", ".dynamic.onnx")
        quantize_dynamic(str(entry / graph), str(dynamic), per_channel=True, weight_type=QuantType.QInt8)
        static = int8_entry / graph.replace(".onnx", ".int8.onnx")
        out[graph] = {"fp32": entry / graph, "int8 static": static, "int8 dynamic": dynamic}
    return out


def tile_rows(entry: Path, int8_entry: Path, work: Path, repeats: int) -> list[str]:
    """The per-tile table's markdown rows: graph, side, variant, ms per tile, ratio, PSNR vs fp32 today."""
    manifest = Manifest.model_validate_json((entry / MANIFEST_NAME).read_text())
    base = manifest.tile.size if manifest.tile else 256
    rows = []
    with ThreadPoolExecutor(2) as pool:
        for graph, paths in int8_graphs(entry, int8_entry, work).items():
            for side in (base, 2 * base):
                feed = graph_feeds(entry, graph, [timed_tile(side, base)])[0]
                found = variants(paths, feed, pool)
                medians = interleaved({k: v[0] for k, v in found.items()}, repeats, f"{graph} {side}px")
                names = list(found)
                reference = found[names[0]][2].run(["restored"], feed)[0]
                baseline = medians[names[0]]
                for name in names:
                    _, tiles, session = found[name]
                    per_tile = medians[name] / tiles
                    quality = psnr(reference, session.run(["restored"], feed)[0])
                    rows.append(
                        f"| {graph} | {side} | {name} | {per_tile * 1e3:.0f} | {per_tile / baseline:.2f} | "
                        f"{quality:.1f} |"
                    )
    return rows


def restore_once(model: RestoreModel, data: bytes, sides: tuple[int, ...], overlap: int) -> bytes:
    """The default mode end to end in process: decode, tiles (the service's choice of side) in batches of
    8 through the denoise graph as served, stitch, JPEG encode."""
    image = decode_image(data, 10**9)
    grid = choose_tile(image.height, image.width, sides, overlap, model.size_multiple)
    tiles = extract_tiles(image.pixels, grid)
    outs = [
        model.run({"image": tiles[i : i + 8]}, ["restored"], DENOISE_GRAPH)["restored"]
        for i in range(0, len(tiles), 8)
    ]
    restored = stitch_tiles(np.concatenate(outs), grid)[:, : image.height, : image.width]
    return encode_image(restored.transpose(1, 2, 0), "jpeg")


def pipeline_rows(entry: Path, int8_entry: Path, photo: bytes, repeats: int, photo_repeats: int) -> list[str]:
    """End-to-end rows: image, entry, median seconds (the 12 MP photo and a 512 px crop of it), with the
    service's defaults on 2 cores: tile sides the manifest's and twice it, 2 parts x 1 thread, at most 8
    base tiles' pixels per call. The 512 px runs (after a warm-up) warm the sessions for the 12 MP ones."""
    small = io.BytesIO()
    Image.open(io.BytesIO(photo)).crop((0, 0, 512, 512)).save(small, format="JPEG", quality=90)
    rows = []
    models = {}
    for path in (entry, int8_entry):
        manifest = Manifest.model_validate_json((path / MANIFEST_NAME).read_text())
        tile = manifest.tile.size if manifest.tile else 256
        overlap = manifest.tile.overlap if manifest.tile else 32
        models[path] = RestoreModel.load(
            ModelEntry(path, manifest),
            ["CPUExecutionProvider"],
            1,
            parallel=2,
            max_call_pixels=8 * tile * tile,
        )
    for label, data, count in (
        ("512 px JPEG", small.getvalue(), repeats),
        ("12 MP JPEG", photo, photo_repeats),
    ):
        calls = {
            str(path.name): (lambda m=model, d=data: restore_once(m, d, (tile, 2 * tile), overlap))
            for path, model in models.items()
        }
        for name, seconds in interleaved(calls, count, label, warm=data is not photo).items():
            rows.append(f"| {label} | {name} | {seconds:.2f} |")
    return rows


def section(args: argparse.Namespace, tiles: list[str], codecs: list[str], pipeline: list[str]) -> str:
    """The "Per-tile CPU speed" section of docs/BENCHMARKS.md."""
    head = [
        "## Per-tile CPU speed (`benchmarks/cpu_speed.py`)",
        "",
        f"Machine: {cpu_model()}, {len(os.sched_getaffinity(0))} cores (shared, noisy VM), "
        f"Python {platform.python_version()}, onnxruntime {ort.__version__}. Command: `nice python "
        f"benchmarks/cpu_speed.py --entry {args.entry} --repeats {args.repeats} "
        f"--photo-repeats {args.photo_repeats} --write-doc`. Medians of "
        "interleaved rounds; ratio against today's fp32 session (2 intra-op threads, one tile per call); "
        "quality: PSNR (dB) of `restored` against today's fp32 on the same degraded training tile "
        "(99 = same).",
        "",
        "| graph | tile | variant | ms per tile | ratio | PSNR vs fp32 (dB) |",
        "| --- | --- | --- | --- | --- | --- |",
        *tiles,
        "",
        "12 MP JPEG (4000 x 3000, q90) decode and encode of the decoded pixels; max diff: largest pixel "
        "difference (0..255) from Pillow's decode.",
        "",
        "| operation | ms | ratio to Pillow | max diff |",
        "| --- | --- | --- | --- |",
        *codecs,
        "",
        "Default mode end to end in process (Pillow decode, the service's tile choice, `RestoreModel` as "
        "served on 2 cores: 2 parts x 1 thread, batches of 8, stitch, JPEG encode), seconds:",
        "",
        "| image | entry | s |",
        "| --- | --- | --- |",
        *pipeline,
        "",
        "<!-- end cpu_speed -->",
    ]
    return "\n".join(head)


def main(argv: list[str] | None = None) -> int:
    """Run every measurement and print the section (``--write-doc``: also into docs/BENCHMARKS.md)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--entry", type=Path, default=Path("model_store/dir-restore/3.3.0"))
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds per measurement")
    p.add_argument("--photo-repeats", type=int, default=1, help="rounds of the 12 MP end-to-end run")
    p.add_argument("--write-doc", action="store_true", help="replace the section in docs/BENCHMARKS.md")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cpu-speed-") as tmp:
        work = Path(tmp)
        version = f"{args.entry.name}-int8"
        int8 = quantize_entry(args.entry, work / version, ("denoise.onnx", "model.onnx"), min_psnr_db=0.0)
        tiles = tile_rows(args.entry, int8.entry_dir, work, args.repeats)
        photo = photo_jpeg()
        codecs = codec_rows(photo, args.repeats)
        pipeline = pipeline_rows(args.entry, int8.entry_dir, photo, args.repeats, args.photo_repeats)
    text = section(args, tiles, codecs, pipeline)
    print(text)
    if args.write_doc:
        write_section(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
