"""One request through the model: image -> tiles -> queue (batched across requests) -> stitched outputs.

Two-pass entries (manifest ``guide``) pool over the whole image, which no single tile sees: pass 1 runs every
tile through the guide graph, which returns per tile only its features summed over the window the tile owns
(computed here from the tile grid, so each pixel counts once); the image's mean is their total divided by
the windows' cell count, and pass 2 runs every tile with that mean through the serving graph.

Restore modes: ``full`` (the DiR restoration above) and, for entries with a denoise graph, ``denoise``
(one pass of D*(DfR(tile)) per tile: noise and artefacts removed, the camera's colour and tone kept).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from service.deadline import Deadline
from service.errors import BadInput
from service.imaging import DecodedImage
from service.queue import DENOISE_GRAPH, GUIDE_GRAPH, GUIDE_SUM, SERVE_GRAPH, WINDOW_INPUT, TileQueue
from service.store import RestoreModel
from service.tiling import (
    Stitcher,
    TileGrid,
    choose_tile,
    extract_tiles,
    owned_window,
    plan_tiles,
    windows_mean,
)

#: ``progress(done, total)``: tile runs finished so far, of the request's total (tiles x passes of its mode).
Progress = Callable[[int, int], None]


class _Count:
    """Tile runs finished of ``total``, reported to ``progress`` at each one."""

    def __init__(self, total: int, progress: Progress | None) -> None:
        self.done = 0
        self.total = total
        self.progress = progress

    def add(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total)


@dataclass
class Inference:
    """Stitched outputs of one image: ``arrays[name]`` is (C, ceil(H/s), ceil(W/s)) float32 with
    ``s = scales[name]`` (C = 3 and s = 1 for ``restored``, sRGB in [0, 1]); timings in seconds."""

    arrays: dict[str, np.ndarray]
    scales: dict[str, int]
    tiles: int
    queue_wait_s: float
    compute_s: float
    total_s: float

    def take_restored_hwc(self) -> np.ndarray:
        """The restored image as an (H, W, 3) float32 sRGB [0, 1] view of the (C, H, W) array (not
        contiguous: no copy), which this result gives up, so a large image is held once while it is
        converted (:func:`service.imaging.to_uint8`, in bands) and encoded."""
        return self.arrays.pop("restored").transpose(1, 2, 0)


class Restorer:
    """Runs images through ``queue`` in square tiles overlapping by ``overlap`` px. Each image gets the side
    of ``tiles`` that computes the fewest pixels (:func:`service.tiling.choose_tile`); tiles of one side
    share batches across requests."""

    def __init__(self, model: RestoreModel, queue: TileQueue, tiles: tuple[int, ...], overlap: int) -> None:
        if not tiles:
            raise BadInput("no tile sides given")
        for side in tiles:
            plan_tiles(side, side, side, overlap, model.size_multiple)
        self.model = model
        self.queue = queue
        self.tiles = tuple(sorted(set(tiles)))
        self.overlap = overlap
        #: The mode of requests that name none (set from ``DIR_RESTORE_MODE`` with :meth:`resolve_mode`).
        self.default_mode = self.resolve_mode("auto")

    def plan(self, height: int, width: int) -> TileGrid:
        """The tile grid ``infer`` uses for a ``height x width`` image."""
        return choose_tile(height, width, self.tiles, self.overlap, self.model.size_multiple)

    @property
    def output_names(self) -> list[str]:
        """Outputs the model graph offers (``restored``, ``r_plus``, ``r0``, ``pilot``)."""
        return list(self.model.output_names)

    @property
    def modes(self) -> list[str]:
        """Restore modes this model offers: ``full`` always, ``denoise`` when the entry has its graph."""
        return ["full"] + (["denoise"] if self.model.denoise_file else [])

    def resolve_mode(self, mode: str) -> str:
        """``auto`` -> ``denoise`` when the model offers it, else ``full``; any other mode is returned when
        the model offers it, else ``BadInput`` names it."""
        if mode == "auto":
            return "denoise" if "denoise" in self.modes else "full"
        self.check_mode(mode)
        return mode

    def check_mode(self, mode: str) -> None:
        """Raise ``BadInput`` naming ``mode`` when the model does not offer it."""
        if mode not in self.modes:
            raise BadInput(
                f"restore mode {mode!r} is not offered by {self.model.ref}; it offers {self.modes}"
            )

    def check_outputs(self, outputs: list[str]) -> None:
        """Raise ``BadInput`` naming any output the model does not have."""
        unknown = [o for o in outputs if o not in self.model.output_names]
        if unknown or not outputs:
            raise BadInput(
                f"unknown outputs {unknown or outputs}; this model offers {self.model.output_names}"
            )

    async def infer(
        self,
        image: DecodedImage,
        outputs: list[str],
        deadline: Deadline | float,
        mode: str = "full",
        progress: Progress | None = None,
    ) -> Inference:
        """Run ``image`` (in two passes for a two-pass entry in mode ``full``) and return the stitched
        ``outputs``; mode ``denoise`` offers ``restored`` alone. ``deadline`` (or that many seconds from now)
        covers tiling, both passes and stitching: past it, ``DeadlineExceeded``. ``progress`` hears of every
        tile run as it finishes.

        Tile outputs are streamed: each is blended into its output's accumulator as its batch finishes and
        dropped (:class:`service.tiling.Stitcher`), so the per-tile outputs of the whole image are never
        held at once. ``Inference.queue_wait_s`` and ``compute_s`` add up both passes.
        """
        deadline = Deadline.of(deadline)
        self.check_mode(mode)
        if mode == "denoise":
            if outputs != ["restored"]:
                raise BadInput(f"restore mode 'denoise' returns only 'restored'; asked for {outputs}")
        else:
            self.check_outputs(outputs)
        started = time.perf_counter()
        grid = self.plan(image.height, image.width)
        tiles = await deadline.run(asyncio.to_thread(extract_tiles, image.pixels, grid), "tiling")
        inputs = {self.model.input_name: tiles}
        wait_s = compute_s = 0.0
        graph = DENOISE_GRAPH if mode == "denoise" else SERVE_GRAPH
        two_pass = self.model.guide is not None and graph == SERVE_GRAPH
        count = _Count(grid.count * (2 if two_pass else 1), progress)
        if two_pass:
            mean_input, guide_mean, wait_s, compute_s = await self._guide_mean(tiles, grid, deadline, count)
            inputs[mean_input] = np.broadcast_to(guide_mean, (grid.count, guide_mean.size))
        stitchers: dict[str, Stitcher] = {}

        def take(index: int, values: dict[str, np.ndarray]) -> None:
            for name, output in values.items():
                if name not in stitchers:
                    stitchers[name] = Stitcher(grid, int(output.shape[0]), int(output.shape[-1]))
                stitchers[name].add(index, output)
            count.add()

        result = await self.queue.submit(inputs, outputs, deadline, graph, sink=take)
        del tiles, inputs
        arrays = {}
        for name in outputs:
            arrays[name] = await deadline.run(asyncio.to_thread(stitchers[name].result), "stitching")
        scales = {name: stitchers[name].scale for name in outputs}
        total = time.perf_counter() - started
        wait_s += result.queue_wait_s
        compute_s += result.compute_s
        return Inference(arrays, scales, grid.count, wait_s, compute_s, total)

    async def _guide_mean(
        self, tiles: np.ndarray, grid: TileGrid, deadline: Deadline, count: _Count
    ) -> tuple[str, np.ndarray, float, float]:
        """Pass 1: the guide graph on every tile, each reduced to its features' sum over the window it owns
        -> (serving input name, the image's mean (K,) float32, queue wait, compute time)."""
        guide = self.model.guide
        assert guide is not None
        windows = np.array([owned_window(grid, k, guide.scale) for k in range(grid.count)], dtype=np.uint16)
        inputs = {guide.inputs[0].name: tiles, WINDOW_INPUT: windows}
        sums: list[np.ndarray] = [np.empty(0, np.float32)] * grid.count

        def take(index: int, values: dict[str, np.ndarray]) -> None:
            sums[index] = values[GUIDE_SUM]
            count.add()

        result = await self.queue.submit(inputs, [GUIDE_SUM], deadline, GUIDE_GRAPH, sink=take)
        mean = windows_mean(np.stack(sums), windows)
        return guide.mean_input, mean, result.queue_wait_s, result.compute_s
