"""The detector entry's output contract (``task="detect"`` manifests): the YOLO output layouts a detector
graph may declare, the check of its output shape against them, and its input dtype."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from modelstore.errors import ModelStoreError

LAYOUTS: tuple[str, ...] = ("yolov5", "yolov8")


class DetectorLayoutError(ModelStoreError):
    """A detector graph's output shape does not match the layout it was declared with."""


def check_output_shape(shape: Sequence[int | str | None], layout: str, num_classes: int) -> None:
    """Raise :class:`DetectorLayoutError` unless an output shape fits ``layout`` with ``num_classes`` classes.

    "yolov5" wants (N, B, 5 + C), "yolov8" wants (N, 4 + C, B); symbolic dims (str/None) pass.
    """
    if layout not in LAYOUTS:
        raise DetectorLayoutError(f"unknown output layout {layout!r}; supported: {', '.join(LAYOUTS)}")
    shape = list(shape)
    axis, want = (2, 5 + num_classes) if layout == "yolov5" else (1, 4 + num_classes)
    expected = "(N, B, 5 + C)" if layout == "yolov5" else "(N, 4 + C, B)"
    if len(shape) != 3 or (isinstance(shape[axis], int) and shape[axis] != want):
        raise DetectorLayoutError(
            f"output shape {shape} does not match layout {layout!r}: expected {expected} with "
            f"C={num_classes} classes, i.e. dim {axis} = {want}"
        )


def input_dtype(onnx_type: str) -> type[np.floating[Any]]:
    """numpy dtype for an ONNX Runtime input type string: float16 for "tensor(float16)", else float32."""
    return np.float16 if onnx_type == "tensor(float16)" else np.float32
