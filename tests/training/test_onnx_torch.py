"""ONNX -> torch: small YOLOv5- and YOLOv8-shaped exports and the Yolo-FastestV2 entry's graph run like ONNX
Runtime, pass gradients to the input, and graphs with operators outside the supported set are refused."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from torch import Tensor, nn

from training.detect.install import export_onnx
from training.detect.model import YoloFastestV2
from training.detect.onnx_torch import OnnxConversionError, UnsupportedOperatorError, onnx_to_torch
from training.errors import DiRError

SIZE = 64


def conv_bn_silu(cin: int, cout: int, k: int = 3, s: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm2d(cout), nn.SiLU())


class TinyBackbone(nn.Module):
    """Stride-4 (16 ch) and stride-8 (16 ch) features: strided Conv+BN+SiLU, a max pool, nearest upsample
    (Resize in the graph) and a Concat."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn_silu(3, 8, 3, 2)
        self.down4 = conv_bn_silu(8, 16, 3, 2)
        self.down8 = conv_bn_silu(16, 16, 3, 2)
        self.pool = nn.MaxPool2d(5, 1, 2)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.fuse = conv_bn_silu(32, 16, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        p4 = self.down4(self.stem(x))
        p8 = self.pool(self.down8(p4))
        return self.fuse(torch.cat((self.up(p8), p4), 1)), p8


class TinyV5(nn.Module):
    """YOLOv5-style head: (N, B, 5 + C) rows decoded in-graph (Reshape, Permute, Sigmoid, grid decode)."""

    def __init__(self, nc: int = 3, na: int = 2) -> None:
        super().__init__()
        self.nc, self.na, self.no = nc, na, 5 + nc
        self.backbone = TinyBackbone()
        self.heads = nn.ModuleList(nn.Conv2d(16, na * self.no, 1) for _ in range(2))
        self.register_buffer(
            "anchors", torch.tensor([[[6.0, 8.0], [12.0, 10.0]], [[16.0, 24.0], [30.0, 28.0]]])
        )

    def forward(self, x: Tensor) -> Tensor:
        rows = []
        for i, (feat, stride) in enumerate(zip(self.backbone(x), (4, 8), strict=True)):
            y = self.heads[i](feat)
            bs, _, ny, nx = y.shape
            y = y.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).sigmoid()
            gy, gx = torch.meshgrid(torch.arange(ny), torch.arange(nx), indexing="ij")
            grid = torch.stack((gx, gy), 2).view(1, 1, ny, nx, 2).float()
            xy = (y[..., :2] * 2 - 0.5 + grid) * stride
            wh = (y[..., 2:4] * 2) ** 2 * self.anchors[i].view(1, self.na, 1, 1, 2)
            rows.append(torch.cat((xy, wh, y[..., 4:]), -1).view(bs, -1, self.no))
        return torch.cat(rows, 1)


class TinyV8(nn.Module):
    """YOLOv8-style head: (N, 4 + C, B) with a DFL (Split, Softmax, 1x1 Conv over bins) and dist2bbox."""

    def __init__(self, nc: int = 3, reg_max: int = 4) -> None:
        super().__init__()
        self.nc, self.reg_max = nc, reg_max
        self.backbone = TinyBackbone()
        self.box = nn.ModuleList(nn.Conv2d(16, 4 * reg_max, 1) for _ in range(2))
        self.cls = nn.ModuleList(nn.Conv2d(16, nc, 1) for _ in range(2))
        self.dfl = nn.Conv2d(reg_max, 1, 1, bias=False).requires_grad_(False)
        self.dfl.weight.data[:] = torch.arange(reg_max, dtype=torch.float32).view(1, reg_max, 1, 1)
        points, strides = [], []
        for stride in (4, 8):
            n = SIZE // stride
            gy, gx = torch.meshgrid(torch.arange(n) + 0.5, torch.arange(n) + 0.5, indexing="ij")
            points.append(torch.stack((gx, gy), 0).view(2, -1))
            strides.append(torch.full((1, n * n), float(stride)))
        self.register_buffer("points", torch.cat(points, 1))
        self.register_buffer("strides", torch.cat(strides, 1))

    def forward(self, x: Tensor) -> Tensor:
        feats = self.backbone(x)
        bs = x.shape[0]
        y = torch.cat(
            [
                torch.cat((self.box[i](f), self.cls[i](f)), 1).view(bs, 4 * self.reg_max + self.nc, -1)
                for i, f in enumerate(feats)
            ],
            2,
        )
        box, cls = y.split((4 * self.reg_max, self.nc), 1)
        a = box.shape[2]
        dist = self.dfl(box.view(bs, 4, self.reg_max, a).transpose(2, 1).softmax(1)).view(bs, 4, a)
        lt, rb = dist.chunk(2, 1)
        x1y1, x2y2 = self.points - lt, self.points + rb
        dbox = torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), 1) * self.strides
        return torch.cat((dbox, cls.sigmoid()), 1)


def export(model: nn.Module, path: Path, opset: int, size: int = SIZE) -> Path:
    torch.onnx.export(
        model.eval(),
        (torch.zeros(1, 3, size, size),),
        str(path),
        input_names=["images"],
        output_names=["output0"],
        dynamic_axes={"images": {0: "N"}, "output0": {0: "N"}},
        opset_version=opset,
        dynamo=False,
    )
    return path


def ort_run(path: Path, x: Tensor) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"images": x.numpy()})[0]


@pytest.mark.parametrize("opset", [12, 17])
@pytest.mark.parametrize("arch", [TinyV5, TinyV8])
def test_yolo_shaped_exports_match_onnxruntime(tmp_path: Path, arch: type[nn.Module], opset: int) -> None:
    torch.manual_seed(0)
    path = export(arch(), tmp_path / "m.onnx", opset)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"Conv", "Resize", "Concat", "Sigmoid", "MaxPool"} <= ops
    assert ({"Reshape", "Transpose"} if arch is TinyV5 else {"Split", "Softmax"}) <= ops
    module = onnx_to_torch(path)
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3), requires_grad=True)
    out = module(x)
    assert isinstance(out, Tensor)
    np.testing.assert_allclose(out.detach().numpy(), ort_run(path, x.detach()), atol=1e-4, rtol=1e-5)
    out[..., :4].sum().backward() if arch is TinyV5 else out[:, :4].sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert not list(module.parameters())  # T frozen: weights are buffers


def test_trainable_weights_become_parameters_with_gradients(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TinyV8()
    for m in model.modules():  # distinct folded biases (the exporter shares identical initializers)
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.bias)
    module = onnx_to_torch(export(model, tmp_path / "m.onnx", 17), trainable=True)
    params = list(module.parameters())
    assert params and all(p.dtype.is_floating_point for p in params)
    module(torch.rand(1, 3, SIZE, SIZE)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    # eval-mode export folds each BN into its Conv (bias as an initializer or a Constant node): a weight and
    # a bias per Conv, the DFL weight only
    convs = [m for m in TinyV8().modules() if isinstance(m, nn.Conv2d)]
    assert len(params) == 2 * len(convs) - 1


def test_yolo_fastestv2_entry_graph_converts_and_matches(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = tmp_path / "yf.onnx"
    export_onnx(YoloFastestV2().eval(), path)
    module = onnx_to_torch(path)
    x = torch.rand(1, 3, 352, 352, generator=torch.Generator().manual_seed(4), requires_grad=True)
    out = module(x)
    assert isinstance(out, Tensor) and out.shape == (1, 1815, 85)
    ref = ort_run(path, x.detach())
    np.testing.assert_allclose(out[..., 4:].detach().numpy(), ref[..., 4:], atol=1e-4)
    np.testing.assert_allclose(out[..., :4].detach().numpy(), ref[..., :4], atol=1e-4, rtol=1e-5)
    out[..., 4].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def _graph_with(node: onnx.NodeProto, path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Sigmoid", ["images"], ["s"]), node],
        "g",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_unsupported_operator_is_refused_with_its_name(tmp_path: Path) -> None:
    nms = helper.make_node("NonMaxSuppression", ["s", "s"], ["out"], name="/model/NMS")
    with pytest.raises(UnsupportedOperatorError) as err:
        onnx_to_torch(_graph_with(nms, tmp_path / "nms.onnx"))
    assert isinstance(err.value, DiRError)
    assert "UnsupportedOperator: NonMaxSuppression (node /model/NMS) is not supported for training" in str(
        err.value
    )
    assert "export the detector without NMS" in str(err.value)


def test_unsupported_attributes_are_refused(tmp_path: Path) -> None:
    cubic = helper.make_node("Resize", ["s", "", "scales"], ["out"], name="/up", mode="cubic")
    with pytest.raises(UnsupportedOperatorError, match=r"Resize \(node /up\) with mode=cubic"):
        onnx_to_torch(_graph_with(cubic, tmp_path / "cubic.onnx"))


def test_unreadable_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"not onnx")
    with pytest.raises(OnnxConversionError, match="not a readable ONNX model"):
        onnx_to_torch(path)


def _single_op_graph(
    nodes: list[onnx.NodeProto], inits: dict[str, np.ndarray], opset: int, path: Path
) -> Path:
    graph = helper.make_graph(
        nodes,
        "ops",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [2, 3, 4, 6])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path))
    return path


I64 = np.int64
OP_CASES = {
    "slice_negative_step": (
        [helper.make_node("Slice", ["images", "st", "en", "ax", "sp"], ["out"])],
        {"st": np.array([-1, 4], I64), "en": np.array([-100, 0], I64), "ax": np.array([1, 3], I64),
         "sp": np.array([-1, -2], I64)},
    ),
    "split_equal_squeeze_unsqueeze": (
        [helper.make_node("Split", ["images"], ["a", "b"], axis=3),
         helper.make_node("Sub", ["a", "b"], ["d"]),
         helper.make_node("Unsqueeze", ["d", "ax0"], ["u"]),
         helper.make_node("Squeeze", ["u", "ax0"], ["out"])],
        {"ax0": np.array([0], I64)},
    ),
    "where_equal_constant_of_shape": (
        [helper.make_node("Floor", ["images"], ["f"]),
         helper.make_node("Shape", ["images"], ["shp"]),
         helper.make_node("ConstantOfShape", ["shp"], ["zeros"],
                          value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.0])),
         helper.make_node("Equal", ["f", "zeros"], ["eq"]),
         helper.make_node("Neg", ["images"], ["n"]),
         helper.make_node("Where", ["eq", "n", "images"], ["out"])],
        {},
    ),
    "flatten_matmul_softmax_activations": (
        [helper.make_node("Flatten", ["images"], ["fl"], axis=1),
         helper.make_node("MatMul", ["fl", "w"], ["mm"]),
         helper.make_node("LeakyRelu", ["mm"], ["lr"], alpha=0.2),
         helper.make_node("Tanh", ["lr"], ["th"]),
         helper.make_node("Exp", ["th"], ["ex"]),
         helper.make_node("Sqrt", ["ex"], ["sq"]),
         helper.make_node("Relu", ["sq"], ["re"]),
         helper.make_node("Softmax", ["re"], ["out"], axis=1)],
        {"w": np.linspace(-1, 1, 72 * 5, dtype=np.float32).reshape(72, 5)},
    ),
}  # fmt: skip


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("case", sorted(OP_CASES))
def test_single_operators_match_onnxruntime(tmp_path: Path, case: str, opset: int) -> None:
    nodes, inits = copy.deepcopy(OP_CASES[case])
    path = _single_op_graph(nodes, inits, opset, tmp_path / f"{case}.onnx")
    if opset < 13 and case == "split_equal_squeeze_unsqueeze":  # axes were attributes before opset 13
        for node in nodes[2:]:
            node.input.pop()
            node.attribute.append(helper.make_attribute("axes", [0]))
        path = _single_op_graph(nodes, {}, opset, path)
    x = torch.randn(2, 3, 4, 6, generator=torch.Generator().manual_seed(5))
    out = onnx_to_torch(path)(x)
    assert isinstance(out, Tensor)
    np.testing.assert_allclose(out.numpy(), ort_run(path, x), atol=1e-5)
