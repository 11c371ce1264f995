"""modelstore.detector: decode, NMS, letterbox and entry handling on hand-made tensors and tiny ONNX
graphs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from modelstore.detector import (
    Detection,
    DetectorInputError,
    DetectorLayoutError,
    check_output_shape,
    decode,
    draw_detections,
    find_detector,
    load_detector,
    nms,
    resize_bilinear,
)
from modelstore.errors import ModelStoreError
from tests.detect.conftest import constant_detector_onnx
from training.detect.entries import install_onnx, read_names

# Four YOLOv5 rows over C=2 classes: cx, cy, w, h, obj, p(cat), p(dog).
V5_ROWS = np.array(
    [
        [20.0, 20.0, 10.0, 10.0, 0.9, 0.1, 0.9],  # dog 0.81: kept
        [20.5, 20.0, 10.0, 10.0, 0.8, 0.2, 0.8],  # dog 0.64, IoU 0.9 with row 0: suppressed
        [20.0, 20.0, 10.0, 10.0, 0.9, 0.7, 0.3],  # cat 0.63, same box, other class: kept
        [40.0, 40.0, 8.0, 8.0, 0.2, 0.0, 1.0],  # objectness 0.2 below conf: dropped
        [50.0, 10.0, 8.0, 8.0, 0.5, 0.4, 0.4],  # obj 0.5 passes but score 0.2 below conf: dropped
    ],
    dtype=np.float32,
)
# The same boxes as YOLOv8 (4 + C, B): class scores without objectness.
V8_COLS = np.concatenate((V5_ROWS[:, :4], V5_ROWS[:, 5:] * V5_ROWS[:, 4:5]), 1).T.copy()


def test_decode_yolov5_filters_on_objectness_and_score() -> None:
    boxes, scores, ids = decode(V5_ROWS, "yolov5", conf=0.25)
    np.testing.assert_allclose(scores, [0.81, 0.64, 0.63], rtol=1e-6)
    assert ids.tolist() == [1, 1, 0]
    np.testing.assert_allclose(boxes[0], [15, 15, 25, 25])


def test_decode_yolov8_uses_class_scores() -> None:
    boxes, scores, ids = decode(V8_COLS, "yolov8", conf=0.25)
    np.testing.assert_allclose(scores, [0.81, 0.64, 0.63], rtol=1e-6)
    assert ids.tolist() == [1, 1, 0]
    np.testing.assert_allclose(boxes[2], [15, 15, 25, 25])


def test_decode_rejects_unknown_layout() -> None:
    with pytest.raises(DetectorLayoutError, match="'yolox'"):
        decode(V5_ROWS, "yolox", 0.25)


def test_nms_is_per_class_and_greedy() -> None:
    boxes, scores, ids = decode(V5_ROWS, "yolov5", conf=0.25)
    assert nms(boxes, scores, 0.4, ids).tolist() == [0, 2]
    assert nms(boxes, scores, 0.4).tolist() == [0]  # class-agnostic: one box survives
    assert nms(boxes, scores, 0.95, ids).tolist() == [0, 1, 2]  # IoU 0.905 is not > 0.95
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []


def test_nms_keeps_disjoint_boxes_in_score_order() -> None:
    boxes = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10.5]], dtype=np.float32)
    assert nms(boxes, np.array([0.5, 0.9, 0.7]), 0.5).tolist() == [1, 2]


def test_check_output_shape() -> None:
    check_output_shape([1, 25200, 85], "yolov5", 80)
    check_output_shape(["N", 84, "B"], "yolov8", 80)
    check_output_shape(["batch", "boxes", 85], "yolov5", 80)
    with pytest.raises(DetectorLayoutError, match=r"\[1, 84, 8400\].*'yolov5'.*dim 2 = 85"):
        check_output_shape([1, 84, 8400], "yolov5", 80)
    with pytest.raises(DetectorLayoutError, match="dim 1 = 84"):
        check_output_shape([1, 8400, 85], "yolov8", 80)
    with pytest.raises(DetectorLayoutError, match="expected"):
        check_output_shape([8400, 85], "yolov5", 80)


def test_resize_bilinear_matches_opencv_bit_exactly() -> None:
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    for h, w in ((352, 352), (20, 31), (37, 53), (100, 13)):
        np.testing.assert_array_equal(resize_bilinear(img, h, w), cv2.resize(img, (w, h)))


def _install(tmp_path: Path, names: Path, output: np.ndarray, layout: str, **kw: object) -> Path:
    onnx_path = constant_detector_onnx(tmp_path / f"{layout}.onnx", output, 64)
    return install_onnx(onnx_path, tmp_path / "store", layout, read_names(names), 64, f"tiny-{layout}", **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("layout", ["yolov5", "yolov8"])
def test_user_onnx_entry_detects_with_letterbox(tmp_path: Path, names_file: Path, layout: str) -> None:
    # One confident "dog" box centred in the 64x64 input: cx=32, cy=32, w=32, h=16 -> xyxy (16, 24, 48, 40).
    row = np.array([[32.0, 32.0, 32.0, 16.0, 0.95, 0.05, 0.95]], dtype=np.float32)
    out = row[None] if layout == "yolov5" else np.concatenate((row[:, :4], row[:, 5:]), 1).T[None]
    entry = _install(tmp_path, names_file, out, layout)
    det = load_detector(entry, intra_op_threads=1)
    image = np.zeros((100, 200, 3), np.uint8)  # letterbox: scale 0.32, 64x32 content, 16 px pad top/bottom
    (found,) = det.detect(image)
    assert (found.class_id, found.class_name) == (1, "dog")
    np.testing.assert_allclose(found.box, (50.0, 25.0, 150.0, 75.0), atol=1e-4)
    assert found.to_dict()["box"] == pytest.approx([50.0, 25.0, 150.0, 75.0], abs=1e-4)
    batch = det.detect_batch([image, np.zeros((64, 64, 3), np.uint8)])
    assert len(batch) == 2 and batch[1][0].box == pytest.approx((16.0, 24.0, 48.0, 40.0), abs=1e-4)
    assert det.detect(image, conf=0.99) == []


def test_half_precision_fixed_batch_export(tmp_path: Path, names_file: Path) -> None:
    row = np.array([[[32.0, 32.0, 32.0, 16.0, 0.9, 0.1, 0.9]]], dtype=np.float32)
    onnx_path = constant_detector_onnx(tmp_path / "half.onnx", row, 64, batch=1, half=True)
    entry = install_onnx(onnx_path, tmp_path / "store", "yolov5", read_names(names_file), 64, "half")
    det = load_detector(entry)
    assert not det.dynamic_batch
    results = det.detect_batch([np.zeros((64, 64, 3), np.uint8)] * 2)
    assert [r[0].box for r in results] == [pytest.approx((16.0, 24.0, 48.0, 40.0), abs=1e-2)] * 2


def test_wrong_layout_onnx_is_rejected(tmp_path: Path, names_file: Path) -> None:
    v8_like = np.zeros((1, 6, 10), np.float32)  # (N, 4 + C, B) with C=2
    expected = r"\['N', 6, 10\] does not match layout 'yolov5'.*dim 2 = 7"
    with pytest.raises(DetectorLayoutError, match=expected):
        _install(tmp_path, names_file, v8_like, "yolov5")
    # Output dims unknown until run: the shape of a real run is checked.
    onnx_path = constant_detector_onnx(tmp_path / "sym.onnx", v8_like, 64, symbolic_output=True)
    with pytest.raises(DetectorLayoutError, match=r"sym.onnx: output shape \[1, 6, 10\]"):
        install_onnx(onnx_path, tmp_path / "store", "yolov5", read_names(names_file), 64, "sym")
    with pytest.raises(DetectorLayoutError, match="C=2 classes"):
        _install(tmp_path, names_file, np.zeros((1, 10, 85), np.float32), "yolov5")
    assert not (tmp_path / "store" / "tiny-yolov5").exists()


def test_input_size_mismatch_is_rejected(tmp_path: Path, names_file: Path) -> None:
    onnx_path = constant_detector_onnx(tmp_path / "m.onnx", np.zeros((1, 3, 7), np.float32), 64)
    with pytest.raises(ModelStoreError, match="--input-size is 640"):
        install_onnx(onnx_path, tmp_path / "store", "yolov5", read_names(names_file), 640, "m")


def test_sha256_mismatch_refuses_to_load(tmp_path: Path, names_file: Path) -> None:
    entry = _install(tmp_path, names_file, np.zeros((1, 3, 7), np.float32), "yolov5")
    with (entry / "model.onnx").open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ModelStoreError, match=r"sha256 .* does not match"):
        load_detector(entry)


def test_entry_with_wrong_task_or_missing_keys(tmp_path: Path, names_file: Path) -> None:
    entry = _install(tmp_path, names_file, np.zeros((1, 3, 7), np.float32), "yolov5")
    manifest = json.loads((entry / "manifest.json").read_text())
    del manifest["extra"]["channel_order"]
    (entry / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelStoreError, match="channel_order"):
        load_detector(entry)
    manifest["task"] = "restore"
    (entry / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelStoreError, match="expected 'detect'"):
        load_detector(entry)


def test_existing_entry_needs_force(tmp_path: Path, names_file: Path) -> None:
    out = np.zeros((1, 3, 7), np.float32)
    _install(tmp_path, names_file, out, "yolov5")
    with pytest.raises(ModelStoreError, match="--force"):
        _install(tmp_path, names_file, out, "yolov5")
    _install(tmp_path, names_file, out, "yolov5", force=True)


def test_find_detector_picks_highest_version(tmp_path: Path, names_file: Path) -> None:
    store = tmp_path / "store"
    assert find_detector(store) is None
    out = np.zeros((1, 3, 7), np.float32)
    for version in ("2", "10", "9"):
        _install(tmp_path, names_file, out, "yolov5", version=version)
    assert find_detector(store) == store / "tiny-yolov5" / "10"
    assert find_detector(store, "tiny-yolov5") == store / "tiny-yolov5" / "10"
    assert find_detector(store, "absent") is None


def test_bad_images_and_thresholds_are_rejected(tmp_path: Path, names_file: Path) -> None:
    det = load_detector(_install(tmp_path, names_file, np.zeros((1, 3, 7), np.float32), "yolov5"))
    with pytest.raises(DetectorInputError, match=r"shape \(H, W, 3\), got \(4, 4\)"):
        det.detect(np.zeros((4, 4), np.uint8))
    with pytest.raises(DetectorInputError, match="float32"):
        det.detect(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(DetectorInputError, match=r"conf=1\.5"):
        det.detect(np.zeros((4, 4, 3), np.uint8), conf=1.5)


def test_draw_detections_marks_the_box() -> None:
    image = np.zeros((60, 80, 3), np.uint8)
    dets = [Detection(class_id=3, class_name="motorbike", score=0.5, box=(10.0, 20.0, 50.0, 55.0))]
    drawn = draw_detections(image, dets)
    assert drawn.shape == image.shape and drawn.dtype == np.uint8
    assert drawn[40, 10].any() and drawn[40, 50].any() and not drawn[40, 30].any()
    assert not image.any()


def test_runtime_side_imports_no_torch() -> None:
    code = (
        "import sys, modelstore.detector, training.detect.entries, training.detect.coco_map; "
        "sys.exit('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
