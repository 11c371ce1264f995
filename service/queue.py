"""The queue interface both backends implement, and the byte codec Redis jobs and results use.

A request submits the inputs of its ``n`` tiles for one graph of the model: ``{input name: (n, ...)}``,
the image tiles ``(n, 3, T, T)`` sRGB (uint8 0..255, or float32 [0, 1] for 16-bit sources) plus, for the
serving graph of a two-pass entry, ``guide_mean`` ``(n, K)`` float32, and for its guide graph
``owned_window`` ``(n, 4)`` uint16. It gets back, per requested output name, ``(n, C, T/s, T/s)`` float32
in tile order (``guide_sum``: ``(n, K)``). Tiles of different requests share batches; each graph has its
own lane (embedded deque, Redis stream), so a batch never mixes graphs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from service.deadline import Deadline

#: The serving graph (the manifest's ``onnx_file``): every entry has it.
SERVE_GRAPH = "model"
#: Pass 1 of two-pass entries (the manifest's ``guide``).
GUIDE_GRAPH = "guide"
#: The ``denoise`` restore mode (the manifest's ``extra.denoise``): image -> restored, one pass.
DENOISE_GRAPH = "denoise"
#: Pass-1 input: per tile ``(y0, y1, x0, x1)`` uint16, the cells of its ``(T/s, T/s)`` guide features that
#: it owns (:func:`service.tiling.owned_window`).
WINDOW_INPUT = "owned_window"
#: Pass-1 output: per tile ``(K,)`` float32, the guide features summed over its ``owned_window``; the model
#: reduces right after the guide graph runs, so full feature maps never leave the process that computed them.
GUIDE_SUM = "guide_sum"


#: ``sink(index, outputs)``: tile ``index``'s outputs ``{name: (C, ...)}``, handed over as its batch finishes
#: (in the event loop; tiles of a request may arrive out of order when several workers compute them).
TileSink = Callable[[int, dict[str, np.ndarray]], None]


def lane_ref(model_ref: str, graph: str) -> str:
    """The lane of one graph of ``model_ref`` (``name/version``), used in metric labels and Redis keys:
    the model ref itself for the serving graph, ``name/version:<graph>`` for the others (guide, denoise)."""
    return model_ref if graph == SERVE_GRAPH else f"{model_ref}:{graph}"


@dataclass
class TileResult:
    """Outputs of one request's tiles, with the longest queue wait and the model time of its batches."""

    outputs: dict[str, np.ndarray]
    queue_wait_s: float
    compute_s: float


class TileQueue(Protocol):
    """A batching queue in front of one restoration model."""

    model_ref: str

    async def start(self) -> None:
        """Open connections / start the batcher task."""

    async def close(self) -> None:
        """Stop the batcher task / close connections."""

    async def submit(
        self,
        inputs: dict[str, np.ndarray],
        outputs: list[str],
        deadline: Deadline | float,
        graph: str = SERVE_GRAPH,
        sink: TileSink | None = None,
    ) -> TileResult:
        """Queue one request's tiles for ``graph`` until ``deadline`` (or that many seconds from now); raises
        QueueFull, DeadlineExceeded, Unavailable or InferenceError. A caller cancelled while waiting (its
        client went away) has its tiles dropped: those not yet computing are never run. With ``sink``, each
        tile's outputs go to it as they arrive and are not kept (``TileResult.outputs`` is empty); an error
        raised by the sink fails the request with ``InferenceError``."""
        ...

    async def ping(self) -> None:
        """Raise ``Unavailable`` when the queue cannot take work (Redis down)."""

    async def status(self) -> str:
        """A one-line description for /readyz (backlog, live workers); raises ``Unavailable``."""
        ...

    async def worker_count(self, max_age_s: float = 0.0) -> int | None:
        """Live workers (Redis: heartbeat keys that exist, read at most ``max_age_s`` ago), or None where the
        API process computes itself (embedded); raises ``Unavailable`` when the count cannot be read."""
        ...

    async def check_workers(self) -> None:
        """Raise ``Unavailable`` at once when nothing would compute a request (Redis: no live worker)."""


def pack(header: dict[str, Any], arrays: dict[str, np.ndarray]) -> bytes:
    """Serialise a JSON header and float32/uint16/uint8 arrays: ``<json>\\n<raw bytes ...>`` (no pickle)."""
    specs = []
    blobs: list[bytes | memoryview] = []
    for name, array in arrays.items():
        contiguous = np.ascontiguousarray(array)
        specs.append({"name": name, "dtype": str(contiguous.dtype), "shape": list(contiguous.shape)})
        blobs.append(contiguous.data.cast("B"))  # copied once, by the join below
    head = json.dumps({**header, "arrays": specs}).encode()
    return b"".join([head, b"\n", *blobs])


def unpack(message: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Inverse of ``pack``; raises ``ValueError`` on a malformed message."""
    head, sep, body = message.partition(b"\n")
    if not sep:
        raise ValueError("message has no header line")
    header = json.loads(head)
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for spec in header.pop("arrays", []):
        dtype = np.dtype(spec["dtype"])
        if dtype not in (np.dtype(np.float32), np.dtype(np.uint16), np.dtype(np.uint8)):
            raise ValueError(f"unsupported dtype {dtype}")
        count = int(np.prod(spec["shape"]))
        size = count * dtype.itemsize
        if offset + size > len(body):
            raise ValueError(f"array {spec['name']} overruns the message")
        arrays[spec["name"]] = np.frombuffer(body, dtype=dtype, count=count, offset=offset).reshape(
            spec["shape"]
        )
        offset += size
    return header, arrays


def quantize_unit(array: np.ndarray, bits: int = 16) -> np.ndarray:
    """Values in [0, 1] -> uint16 (``bits=16``, step 1/65535) or uint8 (``bits=8``, step 1/255).

    Workers send ``restored`` tiles of 8-bit sources as uint8 (the response is 8-bit: a quarter of float32
    on the wire; the stitched image is then identical outside tile overlaps and within one 8-bit step inside
    them) and those of 16-bit sources as uint16.
    """
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    top = 255.0 if bits == 8 else 65535.0
    # round(clip(x, 0, 1) * top) as clip(x * top + 0.5, 0.5, top + 0.5) truncated: equal for every x, one
    # temporary instead of three.
    scaled = np.multiply(array, np.float32(top), dtype=np.float32)
    scaled += np.float32(0.5)
    np.clip(scaled, np.float32(0.5), np.float32(top + 0.5), out=scaled)
    return scaled.astype(np.uint8 if bits == 8 else np.uint16)


def dequantize(array: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Inverse of ``quantize_unit`` for uint8 / uint16 arrays -> float32 in [0, 1]; float32 passes through.

    With ``out`` (float32, ``array``'s shape) the result is written there and ``out`` is returned.
    """
    scale = {np.dtype(np.uint16): 65535.0, np.dtype(np.uint8): 255.0}.get(array.dtype)
    if out is None:
        return array if scale is None else array.astype(np.float32) / np.float32(scale)
    if scale is None:
        out[...] = array
    else:
        np.divide(array, np.float32(scale), out=out, dtype=np.float32)
    return out
