"""Install the Yolo-FastestV2 detector into model_store: PyTorch state_dict -> ONNX entry (needs torch).

The Yolo-FastestV2 weights carry no licence, so the entry is built at install time from the user's own
file (``dir-models add-detector yolo-fastestv2 PATH``) and never committed. The exported graph includes the
decode (see :class:`training.detect.model.YoloFastestV2Export`) and so emits the YOLOv5 layout that
:mod:`modelstore.detector` decodes for every entry.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from modelstore.errors import ModelStoreError
from modelstore.manifest import Manifest, ModelFile, TensorSpec, sha256_file, write_manifest
from training.detect.entries import new_entry_dir, utc_now
from training.detect.model import (
    ANCHORS,
    INPUT_SIZE,
    NUM_CLASSES,
    STRIDES,
    YoloFastestV2,
    YoloFastestV2Export,
)

OPSET = 17
UPSTREAM = "dog-qiuqiu/Yolo-FastestV2@ac2a5e3060bff76dd1e45f9b921dd77bfbeb194d"
# Parity tolerances between the torch module and the exported graph on the same input.
BOX_ATOL = 1e-2  # pixels of the 352 input
PROB_ATOL = 1e-4

COCO_NAMES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorbike", "aeroplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "sofa",
    "pottedplant", "bed", "diningtable", "toilet", "tvmonitor", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip


class WeightLoadError(ModelStoreError):
    """A weight file cannot be read or does not fit the architecture (lists the offending keys/shapes)."""


def _describe(keys: list[str], limit: int = 20) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown} (+{len(keys) - limit} more)" if len(keys) > limit else shown


def load_yolo_fastestv2(path: Path, num_classes: int = NUM_CLASSES) -> YoloFastestV2:
    """Build :class:`YoloFastestV2` and load a plain state_dict from ``path`` strictly (eval mode, CPU).

    Raises :class:`WeightLoadError` naming missing, unexpected and wrongly shaped keys.
    """
    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle/zip/runtime errors of many types for a bad file
        raise WeightLoadError(f"cannot read weights {path}: {exc}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightLoadError(f"{path} is not a plain state_dict of tensors (got {type(state).__name__})")
    model = YoloFastestV2(num_classes)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if state[k].shape != own[k].shape
    )
    if missing or unexpected or wrong:
        parts = [
            f"{label} ({len(keys)}): {_describe(keys)}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong))
            if keys
        ]
        raise WeightLoadError(
            f"{path} does not fit Yolo-FastestV2 ({num_classes} classes): " + "; ".join(parts)
        )
    model.load_state_dict(state, strict=True)
    return model.eval()


def export_onnx(model: YoloFastestV2, path: Path, opset: int = OPSET) -> None:
    """Export the decoding wrapper: input "images" (N, 3, 352, 352) -> output "detections" (N, 1815, 5+C)."""
    wrapper = YoloFastestV2Export(model).eval()
    dummy = torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE)
    torch.onnx.export(
        wrapper,
        (dummy,),
        str(path),
        input_names=["images"],
        output_names=["detections"],
        dynamic_axes={"images": {0: "N"}, "detections": {0: "N"}},
        opset_version=opset,
        dynamo=False,
    )


def parity_check(model: YoloFastestV2, onnx_path: Path, seed: int = 0) -> dict[str, float]:
    """Run torch and ONNX Runtime on the same (2, 3, 352, 352) input; raise when they differ beyond
    ``BOX_ATOL`` pixels / ``PROB_ATOL``. Returns the max abs differences."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(2, 3, INPUT_SIZE, INPUT_SIZE, generator=gen)
    with torch.no_grad():
        ref = YoloFastestV2Export(model).eval()(x).numpy()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"images": x.numpy()})[0]
    if got.shape != ref.shape:
        raise ModelStoreError(f"ONNX output shape {got.shape} differs from torch {ref.shape}")
    diffs = {
        "max_abs_box_px": float(np.abs(got[..., :4] - ref[..., :4]).max()),
        "max_abs_prob": float(np.abs(got[..., 4:] - ref[..., 4:]).max()),
    }
    if diffs["max_abs_box_px"] > BOX_ATOL or diffs["max_abs_prob"] > PROB_ATOL:
        raise ModelStoreError(
            f"ONNX export of {onnx_path} disagrees with torch: {diffs} "
            f"(tolerances {BOX_ATOL} px, {PROB_ATOL})"
        )
    return diffs


def yolo_fastestv2_manifest(
    name: str, version: str, names: list[str], weights: Path, onnx_path: Path, diffs: dict[str, float]
) -> Manifest:
    """The entry's manifest: (N, 3, 352, 352) BGR [0, 1] in, (N, B, 5 + C) YOLOv5-layout rows out."""
    boxes = len(ANCHORS[0]) * sum((INPUT_SIZE // s) ** 2 for s in STRIDES)
    return Manifest(
        name=name,
        version=version,
        task="detect",
        size_multiple=1,
        description="Yolo-FastestV2 COCO detector (352x352, decode in-graph, YOLOv5 output layout)",
        opset=OPSET,
        inputs=[
            TensorSpec(
                name="images",
                shape=["N", 3, INPUT_SIZE, INPUT_SIZE],
                value_range=(0.0, 1.0),
                color_space="BGR",
                description="plain bilinear resize to 352x352 (no letterbox), /255, no mean/std",
            )
        ],
        outputs=[
            TensorSpec(
                name="detections",
                shape=["N", boxes, 5 + len(names)],
                layout="N,B,5+C",
                description="cx, cy, w, h (pixels of the 352 input), objectness, softmax class probs",
            )
        ],
        files=[ModelFile(path="model.onnx", sha256=sha256_file(onnx_path))],
        extra={
            "class_names": names,
            "input_size": INPUT_SIZE,
            "channel_order": "BGR",
            "resize": "stretch",
            "output_layout": "yolov5",
            "conf_threshold": 0.3,
            "nms_iou": 0.4,
            "max_det": 300,
            "eval_conf_threshold": 0.01,
            "strides": list(STRIDES),
            "anchors": [[list(a) for a in scale] for scale in ANCHORS],
        },
        training={
            "source": UPSTREAM,
            "weights_file": Path(weights).name,
            "weights_sha256": sha256_file(Path(weights)),
            "licence": "none stated upstream: local use only, never redistribute",
        },
        metrics={"onnx_parity": diffs},
        created=utc_now(),
    )


def install_yolo_fastestv2(
    weights: Path,
    store: Path,
    name: str = "yolo-fastestv2",
    version: str = "1",
    class_names: list[str] | None = None,
    force: bool = False,
) -> Path:
    """Strict-load ``weights``, export ONNX, check parity with torch, write the entry; returns its folder."""
    names = list(class_names or COCO_NAMES)
    model = load_yolo_fastestv2(weights, len(names))
    entry = new_entry_dir(store, name, version, force)
    try:
        onnx_path = entry / "model.onnx"
        export_onnx(model, onnx_path)
        diffs = parity_check(model, onnx_path)
        write_manifest(entry, yolo_fastestv2_manifest(name, version, names, weights, onnx_path, diffs))
    except BaseException:
        shutil.rmtree(entry, ignore_errors=True)
        raise
    return entry
