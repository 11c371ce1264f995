"""The detector stage's pieces (``training.train.align.detector_stage``) on hand-made examples."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from modelstore.manifest import Manifest
from training.detect.model import YoloFastestV2
from training.train.align.config import DetectorStage
from training.train.align.data import LabelledSet, window_boxes
from training.train.align.detector_stage import Renderings, render_set, stage_batch, stage_loss


def _manifest(size: int = 32) -> Manifest:
    return Manifest.model_validate(
        {
            "name": "tiny-yolo",
            "version": "1",
            "task": "detect",
            "onnx_file": "model.onnx",
            "opset": 17,
            "inputs": [],
            "outputs": [],
            "extra": {"input_size": size, "resize": "stretch", "channel_order": "RGB"},
        }
    )


def _data() -> LabelledSet:
    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, 40, 48), generator=g, dtype=torch.uint8) for _ in range(2)]
    boxes = [torch.tensor([[1.0, 0.5, 0.5, 0.5, 0.5]]), torch.zeros(0, 5)]
    return LabelledSet(images, boxes, [Path("a.png"), Path("b.png")], [True, False])


def test_window_boxes_moves_clips_flips_and_drops_by_visible_area() -> None:
    boxes = torch.tensor([[2.0, 0.5, 0.5, 0.5, 0.5], [3.0, 0.1, 0.1, 0.1, 0.1]])
    # Image 100 x 200 (H x W); box 0 spans x 50..150, y 25..75; box 1 x 10..30, y 5..15 (outside).
    out = window_boxes(boxes, (100, 200), (0, 100, 100, 100), flip=False)
    assert out.shape == (1, 5)
    # Inside the window: x 0..50 (half the box, >= 40 %), y 25..75.
    assert torch.allclose(out[0], torch.tensor([2.0, 0.25, 0.5, 0.5, 0.5]))
    flipped = window_boxes(boxes, (100, 200), (0, 100, 100, 100), flip=True)
    assert torch.allclose(flipped[0], torch.tensor([2.0, 0.75, 0.5, 0.5, 0.5]))
    assert len(window_boxes(boxes, (100, 200), (0, 130, 100, 70), flip=False)) == 0  # 20 % visible


def test_render_set_degrades_each_image_draws_times_at_its_own_size() -> None:
    data = _data()
    calls: list[tuple[int, ...]] = []

    def render(x: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(x.shape))
        return x

    out = render_set(data, render, "default-isp", draws=2, seed=0, progress=False)
    assert out.index == [0, 0, 1, 1] and calls == [(1, 3, 40, 48)] * 4
    assert out.clean[0].dtype == torch.uint8 and torch.equal(out.clean[0], data.images[0])
    assert not torch.equal(out.rendered[0], out.rendered[1])  # two draws differ
    again = render_set(data, render, "default-isp", draws=2, seed=0, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(out.rendered, again.rendered, strict=True))


def test_stage_batch_labels_only_images_with_label_files_and_loss_reaches_t_only() -> None:
    data = _data()
    renderings = Renderings([0, 1], list(data.images), [im // 2 for im in data.images])
    cfg = DetectorStage(batch_size=6, labelled_weight=1.0)
    clean, rendered, targets, labelled = stage_batch(
        renderings, data, cfg, _manifest(), torch.Generator().manual_seed(1)
    )
    assert clean.shape == rendered.shape == (6, 3, 32, 32)
    assert 0 < len(labelled) < 6  # both images drawn with this seed
    assert targets.shape[1] == 6 and set(targets[:, 0].long().tolist()) <= set(range(len(labelled)))
    torch.manual_seed(0)
    detector = YoloFastestV2(3).eval()
    teacher = copy.deepcopy(detector).requires_grad_(False)
    terms = stage_loss(detector, teacher, (clean, rendered, targets, labelled), cfg)
    assert {"loss", "distill_loss", "detect_loss"} <= set(terms)
    expected = terms["distill_loss"] + cfg.labelled_weight * terms["detect_loss"]
    assert torch.allclose(terms["loss"], expected)
    terms["loss"].backward()
    assert all(p.grad is not None for p in detector.parameters() if p.requires_grad)
    assert all(p.grad is None for p in teacher.parameters())
    label_free = stage_loss(detector, teacher, (clean, rendered, targets, labelled), DetectorStage())
    assert "detect_loss" not in label_free


@pytest.mark.parametrize("whole", [0.0, 1.0])
def test_whole_image_fraction_decides_the_window(whole: float) -> None:
    data = _data()
    renderings = Renderings([0], [data.images[0]], [data.images[0]])
    cfg = DetectorStage(batch_size=4, whole_image=whole, min_scale=0.5)
    clean, rendered, _, _ = stage_batch(
        renderings, data, cfg, _manifest(40), torch.Generator().manual_seed(0)
    )
    same = [
        torch.allclose(clean[i], clean[0], atol=1e-5)
        or torch.allclose(clean[i], clean[0].flip(-1), atol=1e-5)
        for i in range(4)
    ]
    assert all(same) if whole == 1.0 else not all(same)
    assert torch.equal(clean, rendered)
