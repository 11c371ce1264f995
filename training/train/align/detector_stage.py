"""``--detector-mode joint``'s first stage: the detector T alone, on what the aligned entry will feed it.

Each training image is degraded at its own size by the config's ISP preset (``draws`` times, seeded per
image and draw), rendered once through the entry's detection path (D*(A(r0, pilot)) with A at its starting
weights) and kept as uint8. T is then fine-tuned on crops of these renderings: its outputs on a rendering
match its frozen copy's outputs on the same crop of the clean image (the label-free distillation of
:func:`training.detect.loss.distillation_loss`), plus ``labelled_weight`` x its detection loss on the
crops whose image has YOLO labels. A step costs one detector forward / backward per image instead of the
whole DiR system's, so T sees many more images than in the joint loop for the same time.

Crops keep the image's aspect freedom the detector meets when serving: a ``whole_image`` fraction are the
whole image, the rest a window of [``min_scale``, 1] x its height and (independently) its width; all are
resized by the detector's own pre-processing (:func:`training.train.align.detector.prepare_input`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm import tqdm

from modelstore.manifest import Manifest
from training.detect import loss as losses
from training.isp import simulate
from training.isp.sampler import stable_seed
from training.train.align.config import DetectorStage
from training.train.align.data import LabelledSet, window_boxes
from training.train.align.detector import prepare_input
from training.train.data import step_generator
from training.train.schedule import lr_at

#: Renders a degraded image (1, 3, H, W) sRGB [0, 1], H and W multiples of 4 -> (1, 3, H, W) in [0, 1].
RenderFn = Callable[[Tensor], Tensor]


@dataclass
class Renderings:
    """The stage's training set: for each (image, draw), the image index into the :class:`LabelledSet`,
    the clean image and its rendering, both (3, H, W) uint8 sRGB (H, W: the image's, cut to multiples
    of 4)."""

    index: list[int]
    clean: list[Tensor]
    rendered: list[Tensor]

    def __len__(self) -> int:
        return len(self.index)


def _to_uint8(x: Tensor) -> Tensor:
    return x.clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)


def render_set(
    data: LabelledSet, render: RenderFn, preset: str, draws: int, seed: int, progress: bool = True
) -> Renderings:
    """Degrade every image of ``data`` ``draws`` times by ISP ``preset`` (seed: ``stable_seed(
    "align-detector", seed, file name, draw)``) and render each through ``render`` -> :class:`Renderings`
    (a progress bar per rendered image). Images are cut to multiples of 4 at the bottom / right (their
    boxes are unchanged to within 3 px)."""
    out = Renderings([], [], [])
    bar = tqdm(total=len(data.images) * draws, desc="render", unit="img", disable=not progress)
    for i, (image, path) in enumerate(zip(data.images, data.files, strict=True)):
        h, w = image.shape[1] // 4 * 4, image.shape[2] // 4 * 4
        clean = image[None, :, :h, :w].float().div(255.0)
        for k in range(draws):
            with torch.no_grad():
                x = simulate(clean, preset=preset, seed=stable_seed("align-detector", seed, path.name, k))
                rendered = render(x.degraded.float().clamp(0.0, 1.0))
            out.index.append(i)
            out.clean.append(_to_uint8(clean[0]))
            out.rendered.append(_to_uint8(rendered[0].cpu()))
            bar.update(1)
    bar.close()
    return out


def _cut(image: Tensor, window: tuple[int, int, int, int], flip: bool) -> Tensor:
    """(3, H, W) uint8 -> its ``window`` (top, left, height, width) as (1, 3, h, w) float [0, 1], mirrored
    when ``flip``."""
    top, left, wh, ww = window
    crop = image[None, :, top : top + wh, left : left + ww].float().div(255.0)
    return crop.flip(-1) if flip else crop


def stage_batch(
    renderings: Renderings,
    data: LabelledSet,
    cfg: DetectorStage,
    manifest: Manifest,
    generator: torch.Generator,
    device: torch.device | None = None,
) -> tuple[Tensor, Tensor, Tensor, list[int]]:
    """One batch on ``device`` (default CPU), all randomness from ``generator``: the detector inputs
    (B, 3, S, S) of the clean crops and of the same crops of the renderings ([0, 1], the detector's
    channel order), the targets (M, 6) [row, class, cx, cy, w, h] of the labelled crops (row indexes
    ``labelled``) and ``labelled``, the batch positions whose image has labels."""
    clean_in: list[Tensor] = []
    rendered_in: list[Tensor] = []
    targets: list[Tensor] = []
    labelled: list[int] = []
    none = torch.zeros(0, 6)
    for b in range(cfg.batch_size):
        j = int(torch.randint(len(renderings), (1,), generator=generator))
        i, clean, rendered = renderings.index[j], renderings.clean[j], renderings.rendered[j]
        h, w = clean.shape[1:]
        if float(torch.rand(1, generator=generator)) < cfg.whole_image:
            wh, ww = h, w
        else:
            span = 1.0 - cfg.min_scale
            wh = max(4, round(h * (cfg.min_scale + span * float(torch.rand(1, generator=generator)))))
            ww = max(4, round(w * (cfg.min_scale + span * float(torch.rand(1, generator=generator)))))
        top = int(torch.randint(h - wh + 1, (1,), generator=generator))
        left = int(torch.randint(w - ww + 1, (1,), generator=generator))
        flip = bool(torch.rand(1, generator=generator) < 0.5)
        window = (top, left, wh, ww)
        clean_in.append(prepare_input(_cut(clean, window, flip), none, manifest)[0])
        rendered_in.append(prepare_input(_cut(rendered, window, flip), none, manifest)[0])
        if data.has_labels[i]:
            rows = window_boxes(data.boxes[i], (h, w), window, flip)
            targets.append(torch.cat((torch.full((len(rows), 1), float(len(labelled))), rows), 1))
            labelled.append(b)
    target = torch.cat(targets) if targets else none
    return torch.cat(clean_in).to(device), torch.cat(rendered_in).to(device), target.to(device), labelled


def stage_loss(
    detector: nn.Module,
    teacher: nn.Module,
    batch: tuple[Tensor, Tensor, Tensor, list[int]],
    cfg: DetectorStage,
) -> dict[str, Tensor]:
    """The stage's loss on one :func:`stage_batch`: distillation (``distill_*``) of T on the renderings
    towards the frozen ``teacher`` on the clean crops, plus ``labelled_weight`` x T's detection loss on the
    labelled crops (``detect_*``); ``loss`` is the total."""
    clean_in, rendered_in, targets, labelled = batch
    with torch.no_grad():
        target_out = teacher(clean_in)
    out = detector(rendered_in)
    terms = {f"distill_{k}": v for k, v in losses.distillation_loss(out, target_out).items()}
    total = terms["distill_loss"]
    if cfg.labelled_weight > 0 and labelled:
        rows = torch.tensor(labelled)
        sub = [tuple(t[rows] for t in scale) for scale in out]
        detect = losses.yolo_fastestv2_loss(sub, targets)
        terms |= {f"detect_{k}": v for k, v in detect.items()}
        total = total + cfg.labelled_weight * detect["loss"]
    return {"loss": total, **terms}


def stage_step(
    detector: nn.Module,
    teacher: nn.Module,
    optimizer: torch.optim.Optimizer,
    renderings: Renderings,
    data: LabelledSet,
    cfg: DetectorStage,
    manifest: Manifest,
    seed: int,
    step: int,
) -> dict[str, float]:
    """One optimiser step of the stage (0-based ``step``): lr from ``cfg.optim``'s schedule, the batch of
    ``(seed, step)`` alone (so a resumed run replays it), :func:`stage_loss`, gradients clipped to
    ``cfg.optim.grad_clip`` -> the loss terms and ``lr`` as floats."""
    lr = lr_at(step, cfg.optim)
    for group in optimizer.param_groups:
        group["lr"] = lr
    device = next(detector.parameters()).device
    batch = stage_batch(renderings, data, cfg, manifest, step_generator(seed, step), device)
    terms = stage_loss(detector, teacher, batch, cfg)
    optimizer.zero_grad(set_to_none=True)
    terms["loss"].backward()
    torch.nn.utils.clip_grad_norm_(list(detector.parameters()), cfg.optim.grad_clip)
    optimizer.step()
    return {k: float(v.detach()) for k, v in terms.items()} | {"lr": lr}
