"""Detector fixtures: the Yolo-FastestV2 entry installed into a temporary model_store from the shared weights,
and tiny hand-made ONNX detector graphs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

WEIGHTS = Path("modelzoo/coco2017-0.241078ap-model.pth")


@pytest.fixture(scope="session")
def yf_dir(dataset) -> Path:
    """``../shared/data/yolo_fastestv2`` (skips where absent)."""
    return dataset("yolo_fastestv2")


@pytest.fixture(scope="session")
def yf_entry(yf_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An installed yolo-fastestv2/1 entry in a temporary store (never in the repository)."""
    from training.detect.install import install_yolo_fastestv2

    return install_yolo_fastestv2(yf_dir / WEIGHTS, tmp_path_factory.mktemp("store"))


def constant_detector_onnx(
    path: Path,
    output: np.ndarray,
    input_size: int,
    batch: int | str = "N",
    symbolic_output: bool = False,
    half: bool = False,
) -> Path:
    """Write an ONNX graph: input "images" (batch, 3, S, S) -> ``output`` (1, ...) broadcast to the batch.

    The output ignores the pixels (adds 0 x their mean) so decode and letterbox tests know it exactly.
    ``symbolic_output`` declares the output dims after the batch as named (unknown until run); ``half``
    makes input and output float16 (as a half-precision export), computing in float32 in between.
    """
    out = output.astype(np.float32)
    out_dims = [f"d{i}" for i in range(1, out.ndim)] if symbolic_output else list(out.shape[1:])
    io_type = TensorProto.FLOAT16 if half else TensorProto.FLOAT
    nodes = [
        helper.make_node("Cast", ["images"], ["images32"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["images32"], ["mean"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Reshape", ["mean", "shape"], ["mean_b"]),
        helper.make_node("Mul", ["mean_b", "zero"], ["zeros"]),
        helper.make_node("Add", ["zeros", "fixed"], ["output32"]),
        helper.make_node("Cast", ["output32"], ["output0"], to=io_type),
    ]
    inits = [
        numpy_helper.from_array(np.asarray([-1] + [1] * (out.ndim - 1), dtype=np.int64), "shape"),
        numpy_helper.from_array(np.zeros(1, np.float32), "zero"),
        numpy_helper.from_array(out, "fixed"),
    ]
    graph = helper.make_graph(
        nodes,
        "constant_detector",
        [helper.make_tensor_value_info("images", io_type, [batch, 3, input_size, input_size])],
        [helper.make_tensor_value_info("output0", io_type, [batch, *out_dims])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def names_file(tmp_path: Path) -> Path:
    """Two class names: cat (0), dog (1)."""
    p = tmp_path / "two.names"
    p.write_text("cat\ndog\n")
    return p
