"""Admission by cost: the work a request will cause, judged from the image header before any pixel is decoded.

A request's cost is the tile pixels its model calls compute: the tiles of the grid the image gets (after
padding to the tile grid, :func:`service.tiling.tile_pixels`) times their side squared, times the passes of
its restore mode (``full`` on a two-pass entry: the guide pass and the serving pass; ``denoise`` and
single-pass entries: one). ``/v1/represent`` always runs ``full``; ``/v1/restore`` and ``/v1/detect`` run the
requested mode (the detector then sees one fixed-size resize of the result, a constant). Memory follows the
same count: tiles, per-tile outputs and stitched arrays all grow with it.

Refused from the header, in microseconds, before the decoder allocates anything:

- shorter side under ``DIR_MIN_SIDE`` or longer/shorter side over ``DIR_MAX_ASPECT``: 422 (the shape is
  unusable, not merely big);
- cost over ``DIR_MAX_COST_PIXELS``: 413;
- ``/v1/represent?format=json`` whose base64 body would pass ``DIR_MAX_JSON_BYTES``: 413 with a hint to ask
  for ``.npy`` or safetensors.

All three are symmetric in width and height, so an EXIF rotation (a transpose) cannot change the verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from modelstore.manifest import TensorSpec
from service.errors import BadInput, TooLarge
from service.inference import Restorer
from service.settings import Settings
from service.tiling import tile_pixels


@dataclass(frozen=True)
class Cost:
    """The work one request will cause: ``tiles`` tiles of ``tile`` px, each computed in ``passes`` passes,
    over a ``width x height`` image."""

    width: int
    height: int
    tile: int
    tiles: int
    passes: int

    @property
    def pixels(self) -> int:
        """Tile pixels computed over all passes (the admission cost)."""
        return self.tiles * self.tile * self.tile * self.passes

    def describe(self) -> str:
        """``"65000x600 image: 873 tiles of 256 px x 2 passes = 114425856 tile pixels"``."""
        passes = "pass" if self.passes == 1 else "passes"
        return (
            f"{self.width}x{self.height} image: {self.tiles} tiles of {self.tile} px x {self.passes} "
            f"{passes} = {self.pixels} tile pixels"
        )


def passes(restorer: Restorer, mode: str) -> int:
    """Model passes per tile of restore ``mode``: 2 for ``full`` on a two-pass entry, else 1."""
    return 2 if mode == "full" and restorer.model.guide is not None else 1


def request_cost(restorer: Restorer, width: int, height: int, mode: str) -> Cost:
    """The :class:`Cost` of running a ``width x height`` image through ``restorer`` in ``mode``."""
    side, tiles = tile_pixels(height, width, restorer.tiles, restorer.overlap, restorer.model.size_multiple)
    return Cost(width, height, side, tiles, passes(restorer, mode))


def check_shape(width: int, height: int, settings: Settings) -> None:
    """``BadInput`` when the shorter side is under ``DIR_MIN_SIDE`` or the aspect ratio over
    ``DIR_MAX_ASPECT``."""
    short, long = min(width, height), max(width, height)
    if short < settings.min_side:
        raise BadInput(
            f"image is {width}x{height}: its shorter side {short} px is under the minimum of "
            f"{settings.min_side} px (DIR_MIN_SIDE)"
        )
    if long > settings.max_aspect * short:
        raise BadInput(
            f"image is {width}x{height}: aspect ratio {long / short:.4g}:1 is over the maximum of "
            f"{settings.max_aspect:g}:1 (DIR_MAX_ASPECT)"
        )


def check_cost(cost: Cost, settings: Settings) -> None:
    """``TooLarge`` naming the cost and the limit when ``cost`` is over ``DIR_MAX_COST_PIXELS``."""
    if cost.pixels > settings.max_cost_pixels:
        raise TooLarge(
            f"request would compute {cost.describe()}; the limit is {settings.max_cost_pixels} "
            "tile pixels per request (DIR_MAX_COST_PIXELS): send a smaller image"
            + (" or ask for mode=denoise" if cost.passes > 1 else "")
        )


def _geometry(spec: TensorSpec) -> tuple[int, int] | None:
    """``(channels, downscale)`` of an ``(N, C, H/s, W/s)`` output with a fixed ``C``, else None."""
    if len(spec.shape) != 4 or not isinstance(spec.shape[1], int):
        return None
    _, slash, factor = str(spec.shape[-1]).partition("/")
    if slash and (not factor.isdigit() or int(factor) < 1):
        return None
    return spec.shape[1], int(factor) if slash else 1


def base64_size(raw_bytes: int) -> int:
    """Characters of ``raw_bytes`` bytes in base64."""
    return 4 * math.ceil(raw_bytes / 3)


def json_array_bytes(restorer: Restorer, outputs: list[str], width: int, height: int) -> int | None:
    """Base64 characters of ``outputs`` (float32) of a ``width x height`` image in a JSON representation,
    from the manifest's output shapes; None when an output's channel count or scale is not fixed there."""
    specs = {o.name: o for o in restorer.model.entry.manifest.outputs}
    total = 0
    for name in outputs:
        geometry = _geometry(specs[name]) if name in specs else None
        if geometry is None:
            return None
        channels, scale = geometry
        total += base64_size(4 * channels * math.ceil(height / scale) * math.ceil(width / scale))
    return total


def check_json_size(size: int, settings: Settings, what: str) -> None:
    """``TooLarge`` with a hint to ask for ``.npy`` when a JSON body of ``size`` bytes of arrays would pass
    ``DIR_MAX_JSON_BYTES``."""
    if size > settings.max_json_bytes:
        raise TooLarge(
            f"format=json would carry {size} bytes of base64 arrays ({what}); the limit is "
            f"{settings.max_json_bytes} bytes (DIR_MAX_JSON_BYTES): ask for format=npy (one output) or "
            "format=safetensors, which carry the same float32 arrays in a quarter less space and no JSON"
        )


def admit(
    restorer: Restorer,
    settings: Settings,
    width: int,
    height: int,
    mode: str,
    json_outputs: list[str] | None = None,
) -> Cost:
    """Check a ``width x height`` image (from its header) for a request in ``mode``; ``json_outputs``: the
    outputs of a ``format=json`` representation. Returns its :class:`Cost`; raises ``BadInput`` (shape) or
    ``TooLarge`` (cost, JSON size)."""
    check_shape(width, height, settings)
    cost = request_cost(restorer, width, height, mode)
    check_cost(cost, settings)
    if json_outputs:
        size = json_array_bytes(restorer, json_outputs, width, height)
        if size is not None:
            check_json_size(size, settings, f"{', '.join(json_outputs)} of a {width}x{height} image")
    return cost
