"""Cutting images into fixed-size overlapping tiles and stitching per-tile outputs back without seams.

Every tile of every request has the same shape ``(3, T, T)``, so tiles from different requests can share a
batch. Overlaps are blended with separable linear ramps (weights normalised per pixel), so the stitched
result has no visible seams when the overlap covers the model's boundary effects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from service.errors import BadInput

#: Tile side and overlap in pixels for entries whose manifest names none.
DEFAULT_TILE = 256
DEFAULT_OVERLAP = 32


@dataclass(frozen=True)
class TileGrid:
    """Tile layout over an image of ``height x width`` pixels, padded to ``padded_height x padded_width``.

    ``ys``/``xs`` are the top/left pixel offsets of the tile rows/columns (multiples of the model's
    ``size_multiple``); tile ``k`` is at ``(ys[k // len(xs)], xs[k % len(xs)])``.
    """

    height: int
    width: int
    padded_height: int
    padded_width: int
    tile: int
    overlap: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]

    @property
    def count(self) -> int:
        """Number of tiles."""
        return len(self.ys) * len(self.xs)


def _round_up(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def _offsets(length: int, tile: int, stride: int) -> tuple[int, ...]:
    offsets = list(range(0, max(length - tile, 0) + 1, stride))
    if offsets[-1] + tile < length:
        offsets.append(length - tile)
    return tuple(offsets)


def plan_tiles(height: int, width: int, tile: int, overlap: int, multiple: int) -> TileGrid:
    """Plan tiles of side ``tile`` overlapping by at least ``overlap`` over an ``height x width`` image.

    The image is padded (reflect) to at least one tile and to a multiple of ``multiple``; the last tile of a
    row or column is shifted back to end at the padded border.
    """
    if tile % multiple or overlap % multiple:
        raise BadInput(f"tile {tile} and overlap {overlap} must be multiples of the model's {multiple}")
    if not 0 <= overlap < tile:
        raise BadInput(f"tile overlap {overlap} must be in [0, tile={tile})")
    padded_h = max(tile, _round_up(height, multiple))
    padded_w = max(tile, _round_up(width, multiple))
    stride = tile - overlap
    return TileGrid(
        height,
        width,
        padded_h,
        padded_w,
        tile,
        overlap,
        _offsets(padded_h, tile, stride),
        _offsets(padded_w, tile, stride),
    )


def choose_tile(height: int, width: int, sizes: tuple[int, ...], overlap: int, multiple: int) -> TileGrid:
    """The grid over a ``height x width`` image whose tiles cover the fewest pixels in all
    (``count * side**2``), over the tile sides ``sizes``; ties go to the larger side (fewer tiles).

    A 512x512 image, say, is one 512-px tile (262 144 pixels computed) instead of nine 256-px tiles
    overlapping by 32 (589 824), while a 300x200 image stays at two 256-px tiles instead of one padded 512.
    """
    if not sizes:
        raise BadInput("no tile sizes to choose from")
    grids = [plan_tiles(height, width, side, overlap, multiple) for side in sorted(set(sizes))]
    return min(grids, key=lambda g: (g.count * g.tile * g.tile, -g.tile))


def _tile_count(length: int, tile: int, stride: int) -> int:
    """Tiles :func:`_offsets` places along a padded side of ``length`` pixels, counted without listing
    them."""
    return 1 if length <= tile else -(-(length - tile) // stride) + 1


def tile_pixels(
    height: int, width: int, sizes: tuple[int, ...], overlap: int, multiple: int
) -> tuple[int, int]:
    """``(side, tiles)`` of the grid :func:`choose_tile` picks over a ``height x width`` image, counted in
    constant time (no offsets listed, nothing allocated), for admission from an image header: a header may
    claim 40 000 000 x 1 pixels. The same for ``width x height`` (a transposed image, e.g. EXIF-rotated).

    Raises ``BadInput`` on tile sides or overlap that do not fit ``multiple`` (as :func:`plan_tiles`).
    """
    if not sizes:
        raise BadInput("no tile sides to choose from")
    best: tuple[int, int, int] | None = None
    for side in sorted(set(sizes)):
        if side % multiple or overlap % multiple or not 0 <= overlap < side:
            raise BadInput(f"tile {side} and overlap {overlap} do not fit the model's multiple {multiple}")
        rows = _tile_count(max(side, _round_up(height, multiple)), side, side - overlap)
        cols = _tile_count(max(side, _round_up(width, multiple)), side, side - overlap)
        key = (rows * cols * side * side, -side, rows * cols)
        if best is None or key < best:
            best = key
    assert best is not None
    return -best[1], best[2]


def extract_tiles(pixels: np.ndarray, grid: TileGrid) -> np.ndarray:
    """``(H, W, 3)`` image -> ``(grid.count, 3, T, T)`` tiles (NCHW, same dtype: uint8 0..255 or float32
    [0, 1]), reflect-padded."""
    pad_h, pad_w = grid.padded_height - grid.height, grid.padded_width - grid.width
    chw = np.ascontiguousarray(pixels.transpose(2, 0, 1))
    if pad_h or pad_w:
        widths = ((0, 0), (0, pad_h), (0, pad_w))
        chw = (
            np.pad(chw, widths, mode="reflect")
            if min(grid.height, grid.width) > 1
            else np.pad(chw, widths, mode="edge")
        )
    t = grid.tile
    tiles = np.empty((grid.count, 3, t, t), dtype=chw.dtype)
    for k, (y, x) in enumerate((y, x) for y in grid.ys for x in grid.xs):
        tiles[k] = chw[:, y : y + t, x : x + t]
    return tiles


def _ramp(size: int, overlap: int, rise: bool, fall: bool) -> np.ndarray:
    """1-D blend weight of one tile: 1 inside; at each side that has a neighbour, 0 over the outer quarter of
    the overlap (where zero padding distorts the model's output most), then a linear ramp to 1 over its
    middle half. Neighbours' weights sum to a positive value everywhere."""
    weight = np.ones(size, dtype=np.float32)
    if overlap > 0:
        margin = overlap // 4
        width = max(overlap - 2 * margin, 1)
        ramp = np.clip((np.arange(overlap, dtype=np.float32) - margin + 0.5) / width, 0.0, 1.0)
        if rise:
            weight[:overlap] = np.minimum(weight[:overlap], ramp)
        if fall:
            weight[size - overlap :] = np.minimum(weight[size - overlap :], ramp[::-1])
    return weight


class Stitcher:
    """Blends per-tile outputs ``(C, T/s, T/s)`` float32 into ``(C, ceil(H/s), ceil(W/s))`` float32 as they
    arrive (``s``: the output's downscale factor, from ``side`` = T/s).

    Tiles are blended in tile order whatever order they arrive in: one that arrives before its predecessors
    is held (it alone) until they have been added, so the result is bit-identical to blending all tiles at
    once (:func:`stitch_tiles`) and memory holds the accumulator, its weights and the early tiles only.
    """

    def __init__(self, grid: TileGrid, channels: int, side: int) -> None:
        if side <= 0 or grid.tile % side:
            raise BadInput(f"tile outputs of side {side} do not fit a grid of tiles of {grid.tile}")
        self.grid = grid
        self.side = side
        self.scale = grid.tile // side
        self.overlap = grid.overlap // self.scale
        self.acc = np.zeros(
            (channels, grid.padded_height // self.scale, grid.padded_width // self.scale), dtype=np.float32
        )
        self.total = np.zeros(self.acc.shape[1:], dtype=np.float32)
        self.added = 0
        self._early: dict[int, np.ndarray] = {}

    def add(self, index: int, output: np.ndarray) -> None:
        """Blend tile ``index``'s output ``(C, T/s, T/s)`` (once its predecessors are in)."""
        if not 0 <= index < self.grid.count or output.shape != (self.acc.shape[0], self.side, self.side):
            raise BadInput(
                f"tile {index} output {output.shape} does not match a grid of {self.grid.count} tiles of "
                f"{self.grid.tile} with {self.acc.shape[0]} channels"
            )
        self._early[index] = output
        while self.added in self._early:
            self._blend(self.added, self._early.pop(self.added))
            self.added += 1

    def _blend(self, k: int, output: np.ndarray) -> None:
        grid, side = self.grid, self.side
        i, j = divmod(k, len(grid.xs))
        y, x = grid.ys[i] // self.scale, grid.xs[j] // self.scale
        weight = np.outer(
            _ramp(side, self.overlap, i > 0, i < len(grid.ys) - 1),
            _ramp(side, self.overlap, j > 0, j < len(grid.xs) - 1),
        )
        self.acc[:, y : y + side, x : x + side] += output * weight
        self.total[y : y + side, x : x + side] += weight

    def result(self) -> np.ndarray:
        """The blended image ``(C, ceil(H/s), ceil(W/s))`` (a view of the accumulator, normalised in place);
        ``BadInput`` when tiles are missing."""
        if self.added != self.grid.count:
            raise BadInput(f"{self.grid.count - self.added} of {self.grid.count} tile outputs are missing")
        self.acc /= self.total
        grid = self.grid
        return self.acc[:, : math.ceil(grid.height / self.scale), : math.ceil(grid.width / self.scale)]


def stitch_tiles(outputs: np.ndarray, grid: TileGrid) -> np.ndarray:
    """Blend per-tile outputs ``(n, C, T/s, T/s)`` into ``(C, ceil(H/s), ceil(W/s))`` float32.

    ``s`` (the output's downscale factor) is inferred from the tile outputs' side.
    """
    n, channels, side, side_w = outputs.shape
    if n != grid.count or side != side_w or grid.tile % side:
        raise BadInput(
            f"tile outputs {outputs.shape} do not match a grid of {grid.count} tiles of {grid.tile}"
        )
    stitcher = Stitcher(grid, channels, side)
    for k in range(n):
        stitcher.add(k, outputs[k])
    return stitcher.result()


def _owned_range(offsets: tuple[int, ...], i: int, tile: int, length: int, scale: int) -> tuple[int, int]:
    """The range ``[a, b)`` of output cells, relative to tile row (or column) ``i``, that it owns.

    Neighbours split their overlap at its midpoint and cells past the image (``ceil(length / scale)``, the
    padding) belong to no tile, so every cell of the image is owned exactly once.
    """
    end = math.ceil(length / scale)
    a = 0 if i == 0 else (offsets[i - 1] + tile + offsets[i]) // 2 // scale
    b = end if i == len(offsets) - 1 else (offsets[i] + tile + offsets[i + 1]) // 2 // scale
    b = min(b, end)
    a = min(a, b)
    return a - offsets[i] // scale, b - offsets[i] // scale


def owned_window(grid: TileGrid, index: int, scale: int) -> tuple[int, int, int, int]:
    """The cells ``(y0, y1, x0, x1)`` that tile ``index`` owns of its ``(T/s, T/s)`` output at downscale
    ``scale`` (relative to the tile, ``0 <= y0 <= y1 <= T/s``, likewise x; possibly empty).

    Over all tiles of ``grid`` these windows cover every cell of the image's ``(ceil(H/s), ceil(W/s))``
    output exactly once: overlaps are split at their midpoints, padding beyond the image is excluded.
    """
    i, j = divmod(index, len(grid.xs))
    y0, y1 = _owned_range(grid.ys, i, grid.tile, grid.height, scale)
    x0, x1 = _owned_range(grid.xs, j, grid.tile, grid.width, scale)
    return y0, y1, x0, x1


def window_sums(outputs: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """Per-tile outputs ``(n, C, h, w)`` summed over each tile's window -> ``(n, C)`` float32.

    ``windows`` is ``(n, 4)`` integers ``(y0, y1, x0, x1)`` (see :func:`owned_window`) with
    ``0 <= y0 <= y1 <= h`` and ``0 <= x0 <= x1 <= w``; sums accumulate in float64. Raises ``ValueError``
    on windows of the wrong shape or outside the outputs.
    """
    n, channels, height, width = outputs.shape
    bounds = np.asarray(windows, dtype=np.int64)
    if bounds.shape != (n, 4):
        raise ValueError(f"windows {bounds.shape} do not match {n} tile outputs (expected ({n}, 4))")
    y0, y1, x0, x1 = bounds.T
    if np.any((y0 < 0) | (y0 > y1) | (y1 > height) | (x0 < 0) | (x0 > x1) | (x1 > width)):
        raise ValueError(f"windows {bounds.tolist()} outside tile outputs of {height}x{width}")
    sums = np.empty((n, channels), dtype=np.float32)
    for k, (a, b, c, d) in enumerate(bounds):
        sums[k] = outputs[k, :, a:b, c:d].sum(axis=(1, 2), dtype=np.float64)
    return sums


def windows_mean(sums: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """The mean over every window's cells from their sums: ``sums`` ``(n, C)``, ``windows`` ``(n, 4)`` as in
    :func:`window_sums` -> ``(C,)`` float32 (float64 accumulation). With the :func:`owned_window` of every
    tile of a grid, that is the spatial mean of the image's output, each image cell counted once."""
    bounds = np.asarray(windows, dtype=np.int64)
    cells = int(((bounds[:, 1] - bounds[:, 0]) * (bounds[:, 3] - bounds[:, 2])).sum())
    if cells <= 0:
        raise ValueError("the windows hold no cells")
    return (sums.sum(axis=0, dtype=np.float64) / cells).astype(np.float32)


def _common_dtype(arrays: list[np.ndarray]) -> list[np.ndarray]:
    """``arrays`` unchanged when they share one dtype, else each as float32 (uint8 scaled by 1/255)."""
    if all(a.dtype == arrays[0].dtype for a in arrays):
        return arrays
    return [a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32) for a in arrays]


def stack_tiles(tiles: list[np.ndarray]) -> np.ndarray:
    """One input of several requests' tiles -> one batch ``(n, ...)`` (image tiles ``(n, 3, T, T)``, owned
    windows ``(n, 4)``): their dtype when every tile has the same one (uint8 image tiles 0..255, uint16
    windows, float32), else float32 (uint8 tiles scaled by 1/255 to [0, 1])."""
    return np.stack(_common_dtype(tiles))


def concat_batches(batches: list[np.ndarray]) -> np.ndarray:
    """One input of several jobs, each ``(n_i, ...)`` -> one batch ``(sum n_i, ...)``; dtypes as in
    :func:`stack_tiles`."""
    return batches[0] if len(batches) == 1 else np.concatenate(_common_dtype(batches))
