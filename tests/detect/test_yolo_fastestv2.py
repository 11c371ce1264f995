"""Yolo-FastestV2: strict weight loading, ONNX parity, the upstream sample detections, mAP on coco128_val."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modelstore.detector import load_detector
from tests.detect.conftest import WEIGHTS
from training.detect.coco_map import coco128_dirs, evaluate_detector
from training.detect.entries import read_names
from training.detect.install import COCO_NAMES, WeightLoadError, load_yolo_fastestv2
from training.detect.model import YoloFastestV2, YoloFastestV2Export

SAMPLES = ("000004", "000139", "000148", "000181", "000230")


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_published_weights_load_strictly(yf_dir: Path) -> None:
    model = load_yolo_fastestv2(yf_dir / WEIGHTS)
    state = torch.load(yf_dir / WEIGHTS, map_location="cpu", weights_only=True)
    assert len(state) == len(model.state_dict()) == 444
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(0.25e6, rel=0.05)


def test_class_names_match_upstream(yf_dir: Path) -> None:
    assert read_names(yf_dir / "data" / "coco.names") == list(COCO_NAMES)


def test_mismatched_state_dict_lists_the_keys(tmp_path: Path) -> None:
    state = YoloFastestV2().state_dict()
    del state["output_cls_layers.bias"]
    state["extra.head.weight"] = torch.zeros(1)
    state["output_obj_layers.weight"] = torch.zeros(4, 72, 1, 1)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(WeightLoadError) as err:
        load_yolo_fastestv2(path)
    msg = str(err.value)
    assert "missing (1): output_cls_layers.bias" in msg
    assert "unexpected (1): extra.head.weight" in msg
    assert "output_obj_layers.weight: file (4, 72, 1, 1) vs model (3, 72, 1, 1)" in msg


def test_non_state_dict_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "junk.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightLoadError, match="cannot read weights"):
        load_yolo_fastestv2(path)


def test_sample_detections_match_upstream(yf_dir: Path, yf_entry: Path) -> None:
    """img/000139.jpg upstream (conf 0.3, NMS 0.4): person 0.87, bicycle 0.46, person 0.32."""
    det = load_detector(yf_entry, intra_op_threads=1)
    found = det.detect(_rgb(yf_dir / "img" / "000139.jpg"), conf=0.3, iou=0.4)
    expected = [("person", 0.87), ("bicycle", 0.46), ("person", 0.32)]
    assert [(d.class_name, round(d.score, 2)) for d in found] == expected
    np.testing.assert_allclose(found[0].box, (170.4, 53.4, 264.2, 172.9), atol=1.0)


def _outline(shape: tuple[int, ...], boxes: list[tuple[float, float, float, float]]) -> np.ndarray:
    mask = np.zeros(shape[:2], dtype=bool)
    h, w = mask.shape
    for box in boxes:
        x1, y1, x2, y2 = (round(v) for v in box)
        x2, y2 = min(x2, w - 1), min(y2, h - 1)
        mask[[y1, y2], x1 : x2 + 1] = True
        mask[y1 : y2 + 1, [x1, x2]] = True
    return mask


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    padded = np.pad(mask, r)
    out = np.zeros_like(mask)
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            out |= padded[dy : dy + mask.shape[0], dx : dx + mask.shape[1]]
    return out


@pytest.mark.parametrize("stem", SAMPLES)
def test_boxes_overlay_upstream_rendering(yf_dir: Path, yf_entry: Path, stem: str) -> None:
    """Our box outlines lie on the cyan outlines drawn in the upstream ``*_result.png``, and vice versa."""
    det = load_detector(yf_entry, intra_op_threads=1)
    image = _rgb(yf_dir / "img" / f"{stem}.jpg")
    ours = _outline(image.shape, [d.box for d in det.detect(image, conf=0.3, iou=0.4)])
    ref = _rgb(yf_dir / "img" / f"{stem}_result.png").astype(int)
    cyan = (ref[..., 0] < 60) & (ref[..., 1] > 200) & (ref[..., 2] > 200)
    assert (cyan & _dilate(ours, 3)).sum() / cyan.sum() > 0.99  # every upstream box is ours
    assert (ours & _dilate(cyan, 3)).sum() / ours.sum() > 0.9  # ours (incl. clipped edges) are upstream's


def test_onnx_matches_torch_on_a_real_image(yf_dir: Path, yf_entry: Path) -> None:
    det = load_detector(yf_entry, intra_op_threads=1)
    x, _ = det.preprocess(_rgb(yf_dir / "img" / "000230.jpg"))
    batch = np.stack([x, x[:, ::-1].copy()])  # two different images: the batch axis is dynamic
    with torch.no_grad():
        ref = YoloFastestV2Export(load_yolo_fastestv2(yf_dir / WEIGHTS))(torch.from_numpy(batch)).numpy()
    got = det.run(batch)
    assert got.shape == ref.shape == (2, 1815, 85)
    np.testing.assert_allclose(got[..., :4], ref[..., :4], atol=1e-2)
    np.testing.assert_allclose(got[..., 4:], ref[..., 4:], atol=1e-4)


def test_map_on_coco128(dataset, yf_entry: Path) -> None:
    """Clean coco128_val, conf 0.01, NMS 0.4: mAP@0.5 0.336, mAP@0.5:0.95 0.187 (see docs/DETECTOR.md)."""
    root = dataset("coco128_val")
    result = evaluate_detector(load_detector(yf_entry, intra_op_threads=1), *coco128_dirs(root))
    assert (result["n_images"], result["n_boxes"], result["n_classes"]) == (128, 898, 73)
    assert result["map50"] == pytest.approx(0.3364, abs=2e-3)
    assert result["map50_95"] == pytest.approx(0.1868, abs=2e-3)
    assert result["map50_voc_all_point"] == pytest.approx(0.331, abs=6e-3)  # SOURCE.md's BGR number
