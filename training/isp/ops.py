"""Small tensor helpers shared by the ISP stages: per-image parameters, colour matrices, Gaussian blur."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F

#: Channels blurred per grouped convolution in :func:`gaussian_blur_chunks` (a multiple of the 8-channel
#: blocks oneDNN's depthwise kernels work in, small enough for the temporaries to stay in cache).
BLUR_CHUNK = 16


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small CPU ``tensor`` (built from Python values) on ``device``, copied without waiting for the device.

    A copy from ordinary (pageable) host memory to a GPU first waits for every kernel already queued, so
    each per-image parameter would stall the pipeline; on CUDA the copy goes through pinned memory and is
    queued on the current stream instead. On the CPU this is ``tensor.to(device)``.
    """
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def for_each_image(work: Callable[[int], object], n: int, on_cpu: bool = True) -> None:
    """Call ``work(i)`` for ``i`` in ``range(n)``, on up to ``torch.get_num_threads()`` threads on the CPU.

    For serial per-image work (a draw from image ``i``'s own generator, a Pillow encode) that releases the
    GIL. ``work(i)`` must touch only image ``i``'s data and state, so the results are the same whatever the
    thread count. ``on_cpu=False`` (work queued on a GPU) runs the calls in order on this thread.
    """
    workers = min(torch.get_num_threads(), n) if on_cpu else 1
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(work, range(n)))
    else:
        for i in range(n):
            work(i)


def per_image(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    """Per-image scalars as an ``(N, 1, 1, 1)`` tensor with ``like``'s dtype and device."""
    return to_device(torch.tensor(list(values), dtype=like.dtype).view(-1, 1, 1, 1), like.device)


def apply_ccm(image: torch.Tensor, ccm: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image colour matrix: ``(N, 3, H, W)`` linear image, ``ccm`` ``(N, 3, 3)`` -> ``(N, 3, H, W)``.

    Output channel ``i`` is ``sum_j ccm[n, i, j] * image[n, j]`` (the matrix acts on column vectors). The
    result goes into ``out`` when given: a contiguous ``(N, 3, H, W)`` tensor other than ``image``.
    """
    n, c, h, w = image.shape
    out = image.new_empty(n, c, h, w) if out is None else out
    torch.bmm(ccm.to(image), image.reshape(n, c, h * w), out=out.view(n, c, h * w))
    return out


def gaussian_kernels(sigma: Sequence[float], device: torch.device) -> torch.Tensor:
    """1-D Gaussian kernels ``(N, K)``, one per sigma in pixels, all of one odd length ``K``.

    ``K = 2 * ceil(3 * max(sigma)) + 1``; a sigma of 0 gives the identity (a centred delta).
    """
    radius = max(1, math.ceil(3.0 * max(sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    s = torch.tensor(list(sigma), dtype=torch.float32).clamp_min(1e-6).view(-1, 1)
    k = torch.exp(-0.5 * (x / s) ** 2)
    return to_device(k / k.sum(dim=1, keepdim=True), device)


def gaussian_blur_chunks(
    image: torch.Tensor, sigma: Sequence[float], chunk: int = BLUR_CHUNK
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Separable Gaussian blur with one sigma (pixels) per image, ``chunk`` channels of the batch at a time.

    ``image`` ``(N, C, H, W)``; yields ``(channels, blurred)``: a slice of the ``N * C`` flattened channels
    (image-major) and their blur ``(1, len, H, W)``, a new contiguous tensor the caller may overwrite. Borders
    are replicated; each chunk runs one grouped convolution per axis. A channel's result does not depend on
    the chunking, and small chunks keep the padded copy and the convolutions' temporaries in cache.
    """
    n, c, h, w = image.shape
    k = gaussian_kernels(sigma, image.device).to(image.dtype)
    r = k.shape[1] // 2
    weight = k.repeat_interleave(c, dim=0)
    x = image.reshape(1, n * c, h, w)
    for start in range(0, n * c, chunk):
        channels = slice(start, min(start + chunk, n * c))
        size = channels.stop - start
        part = F.pad(x[:, channels], (r, r, r, r), mode="replicate")
        part = F.conv2d(part, weight[channels].view(size, 1, 1, -1), groups=size)
        yield channels, F.conv2d(part, weight[channels].view(size, 1, -1, 1), groups=size)


def gaussian_blur(
    image: torch.Tensor, sigma: Sequence[float], out: torch.Tensor | None = None
) -> torch.Tensor:
    """Separable Gaussian blur with one sigma (pixels) per image; ``(N, C, H, W)`` -> same shape.

    Borders are replicated. See :func:`gaussian_blur_chunks`. The result goes into ``out`` when given: a
    contiguous ``(N, C, H, W)`` tensor, which may be ``image`` itself (a chunk is read before it is written).
    """
    n, c, h, w = image.shape
    out = image.new_empty(n, c, h, w) if out is None else out
    flat = out.view(1, n * c, h, w)
    for channels, blurred in gaussian_blur_chunks(image, sigma):
        flat[:, channels] = blurred
    return out
