"""Boxes move with the crops, flips and letterboxing of ``dir-train align`` (hand-computed cases)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from modelstore.manifest import Manifest, TensorSpec
from training.train.align.data import crop_boxes, label_path
from training.train.align.detector import prepare_input


def test_a_crop_moves_clips_flips_and_drops_boxes() -> None:
    # 100 x 200 image (H x W); crop of side 50 at top 10, left 100.
    boxes = torch.tensor(
        [
            [1, 0.6, 0.3, 0.1, 0.2],  # x 110-130, y 20-40: inside -> x 10-30, y 10-30 of the crop
            [
                2,
                0.75,
                0.5,
                0.1,
                0.2,
            ],  # x 140-160, y 40-60: half inside (x 140-150) -> kept, clipped to x 40-50, y 30-50
            [3, 0.1, 0.5, 0.1, 0.2],  # x 10-30: outside -> dropped
        ]
    )
    out = crop_boxes(boxes, (100, 200), (10, 100, 50), flip=False, min_visible=0.4)
    expected = torch.tensor([[1, 0.4, 0.4, 0.4, 0.4], [2, 0.9, 0.8, 0.2, 0.4]])
    torch.testing.assert_close(out, expected)
    flipped = crop_boxes(boxes, (100, 200), (10, 100, 50), flip=True, min_visible=0.4)
    torch.testing.assert_close(flipped[:, 1], 1.0 - expected[:, 1])
    assert len(crop_boxes(boxes, (100, 200), (10, 100, 50), flip=False, min_visible=0.6)) == 1


def _manifest(resize: str, order: str) -> Manifest:
    spec = TensorSpec(name="images", shape=["N", 3, 8, 8])
    extra = {"input_size": 8, "resize": resize, "channel_order": order, "pad_value": 255}
    return Manifest(
        name="d", version="1", task="detect", opset=17, inputs=[spec], outputs=[spec], extra=extra
    )


def test_letterbox_pads_and_moves_boxes_and_bgr_swaps_channels() -> None:
    image = torch.zeros(1, 3, 4, 8)
    image[:, 0] = 0.5  # red
    targets = torch.tensor([[0.0, 1.0, 0.5, 0.5, 1.0, 1.0]])  # the whole image
    x, moved = prepare_input(image, targets, _manifest("letterbox", "RGB"))
    assert x.shape == (1, 3, 8, 8)
    assert torch.all(x[:, :, :2] == 1.0) and torch.all(x[:, :, 6:] == 1.0)  # pad rows (255 / 255)
    assert torch.all(x[0, 0, 2:6] == 0.5) and torch.all(x[0, 1, 2:6] == 0.0)
    torch.testing.assert_close(moved, torch.tensor([[0.0, 1.0, 0.5, 0.5, 1.0, 0.5]]))
    y, same = prepare_input(image, targets, _manifest("stretch", "BGR"))
    assert torch.all(y[0, 2] == 0.5) and torch.all(y[0, 0] == 0.0) and torch.equal(same, targets)


@pytest.mark.parametrize(
    ("image", "labels", "want"),
    [
        ("/d/images/train/a.jpg", None, "/d/labels/train/a.txt"),
        ("/d/photos/a.jpg", None, "/d/photos/a.txt"),
        ("/d/images/train/a.jpg", "/l", "/l/a.txt"),
    ],
)
def test_label_files_follow_the_yolo_layout(image: str, labels: str | None, want: str) -> None:
    assert label_path(Path(image), Path(labels) if labels else None) == Path(want)
