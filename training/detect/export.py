"""Install detector entries into model_store: Yolo-FastestV2 weights -> ONNX, or a user's YOLOv5/v8 ONNX.

The Yolo-FastestV2 weights carry no licence, so the entry is built at install time from the user's own
file (``dir-models add-detector yolo-fastestv2 PATH``) and never committed. The exported graph includes the
decode (see :class:`training.detect.model.YoloFastestV2Export`) and so emits the YOLOv5 layout that
:mod:`service.detection` decodes for every entry.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.detection import LAYOUTS, DetectorLayoutError, check_output_shape, input_dtype
from service.errors import ModelStoreError
from service.manifest import Manifest, ModelFile, TensorSpec, sha256_file, write_manifest
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


def read_names(path: Path) -> list[str]:
    """Class names, one per non-empty line (index = class id)."""
    names = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if not names:
        raise ModelStoreError(f"class-name file {path} holds no names")
    return names


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
    import onnxruntime as ort

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


def _entry_dir(store: Path, name: str, version: str, force: bool) -> Path:
    entry = Path(store) / name / version
    if entry.exists():
        if not force:
            raise ModelStoreError(f"entry {entry} exists; pass --force to replace it or choose --version")
        shutil.rmtree(entry)
    entry.mkdir(parents=True)
    return entry


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


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
    entry = _entry_dir(store, name, version, force)
    try:
        onnx_path = entry / "model.onnx"
        export_onnx(model, onnx_path)
        diffs = parity_check(model, onnx_path)
        boxes = len(ANCHORS[0]) * sum((INPUT_SIZE // s) ** 2 for s in STRIDES)
        manifest = Manifest(
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
            created=_now(),
        )
        write_manifest(entry, manifest)
    except BaseException:
        shutil.rmtree(entry, ignore_errors=True)
        raise
    return entry


def _graph_info(onnx_path: Path) -> tuple[str, list[Any], list[Any], int]:
    """(first input name, its dims, first output's dims, default-domain opset); symbolic dims are str."""
    import onnx

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and others for a non-ONNX file
        raise ModelStoreError(f"{onnx_path} is not a readable ONNX model: {exc}") from exc
    graph = model.graph
    if len(graph.input) < 1 or len(graph.output) < 1:
        raise ModelStoreError(f"{onnx_path}: graph has no input or no output")

    def dims(value_info: Any) -> list[Any]:
        return [
            d.dim_value if d.HasField("dim_value") else d.dim_param
            for d in value_info.type.tensor_type.shape.dim
        ]

    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return graph.input[0].name, dims(graph.input[0]), dims(graph.output[0]), opset


def install_onnx(
    onnx_file: Path,
    store: Path,
    layout: str,
    class_names: list[str],
    input_size: int,
    name: str,
    version: str = "1",
    channel_order: str = "RGB",
    resize: str = "letterbox",
    conf: float = 0.25,
    iou: float = 0.45,
    force: bool = False,
) -> Path:
    """Copy a user's YOLOv5/YOLOv8 ONNX export into an entry after checking its input and output shapes.

    The declared output shape must fit ``layout`` with ``len(class_names)`` classes, both in the graph's
    declared shape and in the shape of a real run on a zero image; otherwise :class:`DetectorLayoutError`.
    """
    import onnxruntime as ort

    if layout not in LAYOUTS:
        raise DetectorLayoutError(f"unknown layout {layout!r}; supported: {', '.join(LAYOUTS)}")
    input_name, in_shape, out_shape, opset = _graph_info(onnx_file)
    if len(in_shape) != 4 or (isinstance(in_shape[1], int) and in_shape[1] != 3):
        raise ModelStoreError(f"{onnx_file}: input {input_name} has shape {in_shape}, expected (N, 3, H, W)")
    if any(isinstance(d, int) and d != input_size for d in in_shape[2:]):
        raise ModelStoreError(
            f"{onnx_file}: input {input_name} has shape {in_shape} but --input-size is {input_size}"
        )
    try:
        check_output_shape(out_shape, layout, len(class_names))
        sess = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
        zeros = np.zeros((1, 3, input_size, input_size), input_dtype(sess.get_inputs()[0].type))
        check_output_shape(list(sess.run(None, {input_name: zeros})[0].shape), layout, len(class_names))
    except DetectorLayoutError as exc:
        raise DetectorLayoutError(f"{onnx_file}: {exc}") from exc
    entry = _entry_dir(store, name, version, force)
    target = entry / "model.onnx"
    shutil.copyfile(onnx_file, target)
    out_spec: list[int | str] = (
        ["N", "B", 5 + len(class_names)] if layout == "yolov5" else ["N", 4 + len(class_names), "B"]
    )
    manifest = Manifest(
        name=name,
        version=version,
        task="detect",
        size_multiple=1,
        description=f"user-supplied {layout} ONNX detector ({Path(onnx_file).name})",
        opset=opset,
        inputs=[
            TensorSpec(
                name=input_name,
                shape=["N", 3, input_size, input_size],
                value_range=(0.0, 1.0),
                color_space=channel_order,
                description=f"{resize} to {input_size}x{input_size}, /255",
            )
        ],
        outputs=[TensorSpec(name="output", shape=out_spec, layout=layout)],
        files=[ModelFile(path="model.onnx", sha256=sha256_file(target))],
        extra={
            "class_names": class_names,
            "input_size": input_size,
            "channel_order": channel_order,
            "resize": resize,
            "pad_value": 114,
            "output_layout": layout,
            "conf_threshold": conf,
            "nms_iou": iou,
            "max_det": 300,
            "eval_conf_threshold": 0.001,
        },
        training={"source": str(Path(onnx_file).resolve()), "source_sha256": sha256_file(Path(onnx_file))},
        created=_now(),
    )
    write_manifest(entry, manifest)
    return entry
