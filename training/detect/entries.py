"""model_store detector entries without torch: a user's YOLOv5/YOLOv8 ONNX export, and shared helpers.

Needs onnx (to read the graph's declared shapes and opset) and onnxruntime (to check the shape of a real
run); :mod:`training.detect.install` adds the torch-based Yolo-FastestV2 install on top.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from modelstore.detector import LAYOUTS, DetectorLayoutError, check_output_shape, input_dtype
from modelstore.errors import ModelStoreError
from modelstore.manifest import Manifest, ModelFile, TensorSpec, sha256_file, write_manifest


def read_names(path: Path) -> list[str]:
    """Class names, one per non-empty line (index = class id)."""
    names = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if not names:
        raise ModelStoreError(f"class-name file {path} holds no names")
    return names


def new_entry_dir(store: Path, name: str, version: str, force: bool) -> Path:
    entry = Path(store) / name / version
    if entry.exists():
        if not force:
            raise ModelStoreError(f"entry {entry} exists; pass --force to replace it or choose --version")
        shutil.rmtree(entry)
    entry.mkdir(parents=True)
    return entry


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _graph_info(onnx_path: Path) -> tuple[str, list[Any], list[Any], int]:
    """(first input name, its dims, first output's dims, default-domain opset); symbolic dims are str."""
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
    entry = new_entry_dir(store, name, version, force)
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
        created=utc_now(),
    )
    write_manifest(entry, manifest)
    return entry
