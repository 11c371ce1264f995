"""Clean training images: folder scan with clear errors, in-memory uint8 store, random patch batches, and
the step-indexed stream of (clean, degraded) training batches, optionally built in worker processes."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from training.data import load_rgb
from training.errors import DataError
from training.isp import render_without_noise, simulate, simulate_two_views

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
# Provenance / documentation files that may sit next to images in a dataset folder (COCO-style sets keep
# their labels as .txt and a config.yaml beside the images).
DOC_SUFFIXES = frozenset({".md", ".txt", ".rst", ".yaml"})


def list_images(folder: Path) -> list[Path]:
    """All image files under ``folder`` (recursive, sorted).

    Raises :class:`DataError` if the folder is missing, holds no images, or holds files that are neither
    images nor documentation (``*.md``, ``*.txt``, ``*.rst``, ``*.yaml``); hidden files are ignored.
    """
    if not folder.is_dir():
        raise DataError(f"training data folder {folder} does not exist")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    foreign = [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES | DOC_SUFFIXES]
    if foreign:
        shown = ", ".join(str(p.relative_to(folder)) for p in foreign[:5])
        raise DataError(f"{folder} holds {len(foreign)} non-image file(s): {shown}")
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        raise DataError(f"training data folder {folder} holds no images ({sorted(IMAGE_SUFFIXES)})")
    return images


@dataclass
class ImageStore:
    """Decoded training and held-out images, each (3, H, W) uint8 sRGB."""

    train: list[Tensor]
    val: list[Tensor]
    train_files: list[Path]
    val_files: list[Path]


def load_store(folder: Path | list[Path], val_images: int, min_size: int) -> ImageStore:
    """Decode every image under ``folder`` (or each of several folders); the last ``val_images`` of the
    first folder (sorted by path) are held out, every other image trains.

    Images smaller than ``min_size`` on either side raise :class:`DataError`.
    """
    folders = folder if isinstance(folder, list) else [folder]
    first = list_images(folders[0])
    if len(first) <= val_images:
        raise DataError(f"{folders[0]} has {len(first)} images; need more than data.val_images={val_images}")
    cut = len(first) - val_images
    files = first[:cut] + [p for f in folders[1:] for p in list_images(f)] + first[cut:]
    images = [load_rgb(p) for p in files]
    small = [str(p) for p, im in zip(files, images, strict=True) if min(im.shape[1:]) < min_size]
    if small:
        raise DataError(f"{len(small)} training image(s) are smaller than {min_size} px: {small[:5]}")
    cut = len(files) - val_images
    return ImageStore(images[:cut], images[cut:], files[:cut], files[cut:])


def sample_batch(images: list[Tensor], batch_size: int, patch: int, generator: torch.Generator) -> Tensor:
    """Random patches with random horizontal flips -> (batch_size, 3, patch, patch) float32 sRGB [0, 1].

    All randomness comes from ``generator`` (CPU), so a saved generator state replays the same batches.
    """
    idx = torch.randint(len(images), (batch_size,), generator=generator).tolist()
    out = []
    for i in idx:
        im = images[i]
        h, w = im.shape[1], im.shape[2]
        top = int(torch.randint(h - patch + 1, (1,), generator=generator))
        left = int(torch.randint(w - patch + 1, (1,), generator=generator))
        crop = im[:, top : top + patch, left : left + patch]
        if bool(torch.rand(1, generator=generator) < 0.5):
            crop = crop.flip(-1)
        out.append(crop)
    return torch.stack(out).float().div_(255.0)


def center_crops(images: list[Tensor], size: int) -> Tensor:
    """Centre crops of each image -> (N, 3, size, size) float32 sRGB [0, 1] (the held-out PSNR set)."""
    out = []
    for im in images:
        h, w = im.shape[1], im.shape[2]
        top, left = (h - size) // 2, (w - size) // 2
        out.append(im[:, top : top + size, left : left + size])
    return torch.stack(out).float().div_(255.0)


def preset_names(preset: str) -> list[str]:
    """The ISP preset names of a training ``preset``: one name, or a mixture ``"train+ablation+lowlight"``."""
    return preset.split("+")


def batch_presets(preset: str, n: int, generator: torch.Generator) -> str | list[str]:
    """The presets of a batch of ``n`` images: ``preset`` itself when it names one, else one name per
    image drawn uniformly from the mixture with ``generator`` (repeat a name to weight it).
    """
    names = preset_names(preset)
    if len(names) == 1:
        return preset
    return [names[i] for i in torch.randint(len(names), (n,), generator=generator).tolist()]


def step_generator(base_seed: int, step: int) -> torch.Generator:
    """The CPU generator of one training step's batch: seeded from ``(base_seed, step)`` alone."""
    return torch.Generator().manual_seed((base_seed * 1_000_003 + step) % (2**63 - 1))


class StepBatches(torch.utils.data.Dataset[tuple[Tensor, ...]]):
    """Item ``k`` is step ``k``'s batch: ``(target, view_1[, view_2])``, each (B, 3, P, P) sRGB [0, 1].

    ``target="clean"``: the target is the clean patch. ``target="render"`` (one view): the target is the
    noise-free rendering of the view (:func:`training.isp.render_without_noise`: the same camera and ISP
    hyperparameters, no noise, no JPEG), the output the ``denoise`` stage learns.

    The clean patches come from :func:`sample_batch` and the degraded views from the ISP simulator
    (``preset``; a mixture ``"a+b"`` draws each image's preset uniformly from the names, see
    :func:`batch_presets`), all drawn from :func:`step_generator` ``(base_seed, k)``: a batch depends on its
    step index only, so resuming replays the same data whichever process builds it. The ISP runs on
    ``device`` (the training device when batches are built in the training process, the CPU in worker
    processes).
    """

    def __init__(
        self,
        images: list[Tensor],
        batch_size: int,
        patch: int,
        preset: str,
        views: int,
        base_seed: int,
        device: torch.device,
        target: str = "clean",
    ) -> None:
        if views not in (1, 2):
            raise ValueError(f"views must be 1 or 2, got {views}")
        if target not in ("clean", "render") or (target == "render" and views != 1):
            raise ValueError(f"target must be 'clean', or 'render' with one view; got {target!r}, {views}")
        self.target = target
        self.images = images
        self.batch_size = batch_size
        self.patch = patch
        self.preset = preset
        self.views = views
        self.base_seed = base_seed
        self.device = device

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, step: int) -> tuple[Tensor, ...]:
        g = step_generator(self.base_seed, step)
        clean = sample_batch(self.images, self.batch_size, self.patch, g).to(self.device)
        preset = batch_presets(self.preset, self.batch_size, g)
        if self.views == 2:
            a, b = simulate_two_views(clean, preset=preset, generator=g)
            return clean, a.degraded, b.degraded
        view = simulate(clean, preset=preset, generator=g)
        if self.target == "render":
            return render_without_noise(view), view.degraded
        return clean, view.degraded


def _single_thread_worker(_: int) -> None:
    torch.set_num_threads(1)


def iterate_batches(
    dataset: StepBatches, first_step: int, workers: int, device: torch.device
) -> Generator[tuple[Tensor, ...], None, None]:
    """Batches of steps ``first_step, first_step + 1, ...`` on ``device``.

    ``workers == 0``: built in this process, on ``dataset.device``. ``workers > 0``: built on the CPU in that
    many worker processes (one torch thread each, batches prefetched in step order), then copied to
    ``device`` (pinned memory on CUDA). The stream is endless; stop consuming it when the stage ends.
    """
    if workers == 0:
        step = first_step
        while True:
            yield dataset[step]
            step += 1
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        sampler=range(first_step, len(dataset)),
        num_workers=workers,
        worker_init_fn=_single_thread_worker,
        pin_memory=device.type == "cuda",
        prefetch_factor=4,
    )
    for batch in loader:
        yield tuple(t.to(device, non_blocking=True) for t in batch)
