"""A user's YOLOv5 / YOLOv8 ONNX export as a differentiable torch module (for Stage II with T in the loop).

Maintained converters were checked first: onnx2torch 1.5.15 and onnx2pytorch 0.6.0 both import torchvision at
import time, and no torchvision fits the pinned CPU torch 2.13.0 (PyPI's 0.28.0 is a CUDA build whose ops do
not register with it: "operator torchvision::nms does not exist"; any other pulls another torch). So this is
a small interpreter over the ``onnx`` package's graph: initializers become buffers (or parameters with
``trainable=True``), nodes run in topological order as torch ops. Only the operator set YOLOv5 / YOLOv8
exports use at opset 11-17 is supported (:data:`SUPPORTED_OPS`); a graph with anything else is refused at
conversion by :class:`UnsupportedOperatorError` naming the operators and a node of each.

BatchNormalization always uses the graph's running statistics (inference behaviour), also while training.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper
from torch import Tensor, nn

from training.errors import DiRError

Attrs = dict[str, Any]


class UnsupportedOperatorError(DiRError):
    """The ONNX graph uses an operator (or attribute value) the converter cannot run differentiably."""


class OnnxConversionError(DiRError):
    """The file is not a readable ONNX model, or its graph is malformed (a cycle, a missing value)."""


_DTYPES = {
    onnx.TensorProto.FLOAT: torch.float32,
    onnx.TensorProto.FLOAT16: torch.float16,
    onnx.TensorProto.DOUBLE: torch.float64,
    onnx.TensorProto.INT64: torch.int64,
    onnx.TensorProto.INT32: torch.int32,
    onnx.TensorProto.INT8: torch.int8,
    onnx.TensorProto.UINT8: torch.uint8,
    onnx.TensorProto.BOOL: torch.bool,
}


@dataclass(frozen=True)
class Ctx:
    """What a handler needs besides inputs and attributes."""

    opset: int
    device: torch.device
    n_outputs: int


Inputs = list[Tensor | None]
Handler = Callable[[Inputs, Attrs, Ctx], list[Tensor]]


def _t(inputs: Inputs, k: int) -> Tensor:
    """Input ``k`` (required)."""
    if k >= len(inputs) or inputs[k] is None:
        raise OnnxConversionError(f"required input {k} is missing")
    return inputs[k]  # type: ignore[return-value]


def _opt(inputs: Inputs, k: int) -> Tensor | None:
    """Input ``k`` or None where absent or empty (ONNX's optional inputs)."""
    return inputs[k] if k < len(inputs) else None


def _ints(t: Tensor | None) -> list[int]:
    return [] if t is None else [int(v) for v in t.reshape(-1).tolist()]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pads(x: Tensor, pads: list[int], value: float = 0.0) -> tuple[Tensor, list[int]]:
    """ONNX pads (begin..., end...) of the spatial dims: symmetric ones go to the op, others to F.pad."""
    n = len(pads) // 2
    begin, end = pads[:n], pads[n:]
    if begin == end:
        return x, begin
    torch_pads = [p for i in reversed(range(n)) for p in (begin[i], end[i])]
    return F.pad(x, torch_pads, value=value), [0] * n


def _conv(i: Inputs, a: Attrs, _: Ctx) -> list[Tensor]:
    x, w = _t(i, 0), _t(i, 1)
    k = w.dim() - 2
    x, pad = _pads(x, list(a.get("pads", [0] * 2 * k)))
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[k]
    strides, dilations = list(a.get("strides", [1] * k)), list(a.get("dilations", [1] * k))
    return [conv(x, w, _opt(i, 2), strides, pad, dilations, a.get("group", 1))]


def _batch_norm(i: Inputs, a: Attrs, _: Ctx) -> list[Tensor]:
    x, scale, bias, mean, var = (_t(i, k) for k in range(5))
    return [F.batch_norm(x, mean, var, scale, bias, False, 0.0, a.get("epsilon", 1e-5))]


def _max_pool(i: Inputs, a: Attrs, _: Ctx) -> list[Tensor]:
    k = list(a["kernel_shape"])
    x, pad = _pads(_t(i, 0), list(a.get("pads", [0] * 2 * len(k))), value=float("-inf"))
    strides, dilations = list(a.get("strides", [1] * len(k))), list(a.get("dilations", [1] * len(k)))
    pool = F.max_pool1d if len(k) == 1 else F.max_pool2d
    return [pool(x, k, strides, pad, dilations, bool(a.get("ceil_mode", 0)))]


def _div(x: Tensor, y: Tensor) -> Tensor:
    if x.is_floating_point() or y.is_floating_point():
        return x / y
    return torch.div(x, y, rounding_mode="trunc")


def _reshape(i: Inputs, a: Attrs, _: Ctx) -> list[Tensor]:
    x, shape = _t(i, 0), _ints(_t(i, 1))
    if not a.get("allowzero", 0):
        shape = [x.shape[d] if s == 0 else s for d, s in enumerate(shape)]
    return [x.reshape(shape)]


def _split(i: Inputs, a: Attrs, ctx: Ctx) -> list[Tensor]:
    x, axis = _t(i, 0), a.get("axis", 0)
    sizes = _ints(_opt(i, 1)) or list(a.get("split", []))
    if not sizes:
        parts = a.get("num_outputs", ctx.n_outputs)
        return list(torch.split(x, -(-x.shape[axis] // parts), axis))
    return list(torch.split(x, sizes, axis))


def _slice(i: Inputs, a: Attrs, _: Ctx) -> list[Tensor]:
    x, starts, ends = _t(i, 0), _ints(_t(i, 1)), _ints(_t(i, 2))
    axes = _ints(_opt(i, 3)) or list(range(len(starts)))
    steps = _ints(_opt(i, 4)) or [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        dim, axis = x.shape[axis], axis % x.dim()
        if step > 0:
            lo, hi = (max(0, min(v + dim if v < 0 else v, dim)) for v in (start, end))
            x = x[(slice(None),) * axis + (slice(lo, hi, step),)]
            continue
        # Negative step: start, start + step, ... while > end (start in [0, dim - 1], end in [-1, dim - 1]).
        first = max(0, min(start + dim if start < 0 else start, dim - 1))
        last = max(-1, end + dim if end < 0 else min(end, dim - 1))
        x = x.index_select(axis, torch.arange(first, last, step, device=x.device))
    return [x]


def _resize(i: Inputs, a: Attrs, _: Ctx) -> list[Tensor]:
    x, scales, sizes = _t(i, 0), _opt(i, 2), _ints(_opt(i, 3))
    size = sizes[2:] if sizes else None
    factors = None if sizes or scales is None else [float(s) for s in scales.tolist()[2:]]
    if _text(a.get("mode", "nearest")) == "nearest":
        return [F.interpolate(x, size=size, scale_factor=factors, mode="nearest")]
    align = _text(a.get("coordinate_transformation_mode", "half_pixel")) == "align_corners"
    return [F.interpolate(x, size=size, scale_factor=factors, mode="bilinear", align_corners=align)]


def _gather(i: Inputs, a: Attrs, _: Ctx) -> list[Tensor]:
    x, idx = _t(i, 0), _t(i, 1)
    axis = a.get("axis", 0) % x.dim()
    idx = idx.long() % x.shape[axis]
    out = x.index_select(axis, idx.reshape(-1).to(x.device))
    return [out.reshape(x.shape[:axis] + idx.shape + x.shape[axis + 1 :])]


def _axes(i: Inputs, a: Attrs) -> list[int] | None:
    given = _opt(i, 1)
    if given is not None:
        return _ints(given)
    return list(a["axes"]) if "axes" in a else None


def _unsqueeze(i: Inputs, a: Attrs, _: Ctx) -> list[Tensor]:
    x, axes = _t(i, 0), _axes(i, a) or []
    rank = x.dim() + len(axes)
    for axis in sorted(ax % rank for ax in axes):
        x = x.unsqueeze(axis)
    return [x]


def _squeeze(i: Inputs, a: Attrs, _: Ctx) -> list[Tensor]:
    x, axes = _t(i, 0), _axes(i, a)
    if axes is None:
        return [x.squeeze()]
    for axis in sorted((ax % x.dim() for ax in axes), reverse=True):
        x = x.squeeze(axis)
    return [x]


def _softmax(i: Inputs, a: Attrs, ctx: Ctx) -> list[Tensor]:
    x = _t(i, 0)
    if ctx.opset >= 13:
        return [x.softmax(a.get("axis", -1))]
    axis = a.get("axis", 1) % x.dim()  # opset < 13: one softmax over all dims from axis on
    return [x.flatten(axis).softmax(-1).reshape(x.shape)]


def _shape(i: Inputs, a: Attrs, ctx: Ctx) -> list[Tensor]:
    dims = list(_t(i, 0).shape)[a.get("start", 0) : a.get("end", None)]
    return [torch.tensor(dims, dtype=torch.int64, device=ctx.device)]


def _expand(i: Inputs, a: Attrs, _: Ctx) -> list[Tensor]:
    x, shape = _t(i, 0), _ints(_t(i, 1))
    rank = max(len(shape), x.dim())
    x = x.reshape([1] * (rank - x.dim()) + list(x.shape))
    shape = [1] * (rank - len(shape)) + shape
    return [x.expand([d if s == 1 else s for s, d in zip(shape, x.shape, strict=True)])]


def _range(i: Inputs, a: Attrs, ctx: Ctx) -> list[Tensor]:
    start, limit, delta = (_t(i, k) for k in range(3))
    return [torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype, device=ctx.device)]


def _constant_of_shape(i: Inputs, a: Attrs, ctx: Ctx) -> list[Tensor]:
    value = torch.from_numpy(numpy_helper.to_array(a["value"]).copy()) if "value" in a else torch.zeros(1)
    return [value.to(ctx.device).reshape(()).expand(_ints(_t(i, 0))).clone()]


def _unary(fn: Callable[[Tensor], Tensor]) -> Handler:
    return lambda i, a, ctx: [fn(_t(i, 0))]


def _binary(fn: Callable[[Tensor, Tensor], Tensor]) -> Handler:
    return lambda i, a, ctx: [fn(_t(i, 0), _t(i, 1))]


HANDLERS: dict[str, Handler] = {
    "Conv": _conv,
    "BatchNormalization": _batch_norm,
    "MaxPool": _max_pool,
    "Reshape": _reshape,
    "Split": _split,
    "Slice": _slice,
    "Resize": _resize,
    "Gather": _gather,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Softmax": _softmax,
    "Shape": _shape,
    "Expand": _expand,
    "Range": _range,
    "ConstantOfShape": _constant_of_shape,
    "Transpose": lambda i, a, ctx: [_t(i, 0).permute(list(a.get("perm", reversed(range(_t(i, 0).dim())))))],
    "Flatten": lambda i, a, ctx: [_t(i, 0).reshape(math.prod(_t(i, 0).shape[: a.get("axis", 1)]), -1)],
    "Cast": lambda i, a, ctx: [_t(i, 0).to(_DTYPES[a["to"]])],
    "Concat": lambda i, a, ctx: [torch.cat([t for t in i if t is not None], a["axis"])],
    "LeakyRelu": lambda i, a, ctx: [F.leaky_relu(_t(i, 0), a.get("alpha", 0.01))],
    "Where": lambda i, a, ctx: [torch.where(_t(i, 0), _t(i, 1), _t(i, 2))],
    "Sigmoid": _unary(torch.sigmoid),
    "Relu": _unary(torch.relu),
    "Tanh": _unary(torch.tanh),
    "Exp": _unary(torch.exp),
    "Identity": _unary(lambda x: x),
    "Floor": _unary(torch.floor),
    "Neg": _unary(torch.neg),
    "Sqrt": _unary(torch.sqrt),
    "Add": _binary(torch.add),
    "Sub": _binary(torch.sub),
    "Mul": _binary(torch.mul),
    "Div": _binary(_div),
    "Pow": _binary(lambda x, y: torch.pow(x, y).to(x.dtype)),
    "Equal": _binary(torch.eq),
    "MatMul": _binary(torch.matmul),
}
SUPPORTED_OPS: tuple[str, ...] = tuple(sorted([*HANDLERS, "Constant"]))


def _attrs(node: onnx.NodeProto) -> Attrs:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _node_label(node: onnx.NodeProto) -> str:
    return f"{node.op_type} (node {node.name or node.output[0]})"


def _attribute_problem(node: onnx.NodeProto, attrs: Attrs) -> str | None:
    """Why a supported operator cannot run with these attributes, or None."""
    if node.op_type == "Conv" and _text(attrs.get("auto_pad", "NOTSET")) != "NOTSET":
        return f"auto_pad={_text(attrs['auto_pad'])}"
    if node.op_type == "Cast" and attrs.get("to") not in _DTYPES:
        return f"to={attrs.get('to')}"
    if node.op_type == "Resize":
        mode = _text(attrs.get("mode", "nearest"))
        coord = _text(attrs.get("coordinate_transformation_mode", "half_pixel"))
        nearest = _text(attrs.get("nearest_mode", "round_prefer_floor"))
        if mode == "nearest" and not (coord == "asymmetric" and nearest == "floor"):
            return f"mode=nearest with {coord}/{nearest} (only asymmetric/floor)"
        if mode == "linear" and coord not in ("half_pixel", "pytorch_half_pixel", "align_corners"):
            return f"mode=linear with {coord}"
        if mode not in ("nearest", "linear"):
            return f"mode={mode}"
    return None


def check_supported(model: onnx.ModelProto) -> None:
    """Raise :class:`UnsupportedOperatorError` naming every unsupported operator (one node of each) and every
    supported operator used with attributes this converter cannot reproduce."""
    unknown: dict[str, onnx.NodeProto] = {}
    bad_attrs: list[str] = []
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in SUPPORTED_OPS:
            unknown.setdefault(node.op_type if not node.domain else f"{node.domain}.{node.op_type}", node)
            continue
        problem = _attribute_problem(node, _attrs(node))
        if problem:
            bad_attrs.append(f"{_node_label(node)} with {problem}")
    if not unknown and not bad_attrs:
        return
    parts = [f"{op} (node {n.name or n.output[0]})" for op, n in unknown.items()] + bad_attrs
    hint = "; export the detector without NMS" if any("NonMaxSuppression" in op for op in unknown) else ""
    verb = "is" if len(parts) == 1 else "are"
    raise UnsupportedOperatorError(
        f"UnsupportedOperator: {', '.join(parts)} {verb} not supported for training{hint} "
        f"(supported: {', '.join(SUPPORTED_OPS)})"
    )


def _topological(graph: onnx.GraphProto, known: set[str]) -> list[onnx.NodeProto]:
    """The graph's nodes in an order where every input is computed before use."""
    pending = list(graph.node)
    order: list[onnx.NodeProto] = []
    while pending:
        ready = [n for n in pending if all(not v or v in known for v in n.input)]
        if not ready:
            missing = sorted({v for n in pending for v in n.input if v and v not in known})
            raise OnnxConversionError(f"graph has a cycle or undefined values: {', '.join(missing[:10])}")
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
        for n in ready:
            known.update(n.output)
        order.extend(ready)
    return order


def _layer_weights(graph: onnx.GraphProto) -> set[str]:
    """Learnable initializers and Constant outputs (through Identity aliases): Conv weight and bias, BN
    scale and bias, MatMul's second operand; not BN statistics, grids or other constants."""
    slots = {"Conv": (1, 2), "BatchNormalization": (1, 2), "MatMul": (1,)}
    alias = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity"}
    names = set()
    for node in graph.node:
        for k in slots.get(node.op_type, ()):
            if k < len(node.input):
                name = node.input[k]
                while name in alias:
                    name = alias[name]
                names.add(name)
    return names


@dataclass(frozen=True)
class _Step:
    op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: Attrs


class OnnxGraphModule(nn.Module):
    """Runs an ONNX graph with torch ops: ``forward(x)`` with x (N, C, H, W) float as the graph's first input
    expects (for detectors: RGB or BGR per the entry, [0, 1]) -> the graph's output, or a tuple of them."""

    def __init__(self, model: onnx.ModelProto, trainable: bool = False) -> None:
        super().__init__()
        graph = model.graph
        self.opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=13)
        self.names: dict[str, str] = {}  # ONNX value name -> attribute name of its buffer / parameter
        weights = _layer_weights(graph) if trainable else set()
        for k, init in enumerate(graph.initializer):
            value = torch.from_numpy(numpy_helper.to_array(init).copy())
            self._store(f"init{k}", init.name, value, init.name in weights)
        constants = [n for n in graph.node if n.op_type == "Constant"]
        for k, node in enumerate(constants):
            self._store(f"const{k}", node.output[0], _constant_value(_attrs(node)), node.output[0] in weights)
        inputs = [v for v in graph.input if v.name not in self.names]
        if not inputs:
            raise OnnxConversionError("graph has no non-initializer input")
        self.input_name = inputs[0].name
        self.input_dtype = _DTYPES.get(inputs[0].type.tensor_type.elem_type, torch.float32)
        self.output_names = [v.name for v in graph.output]
        nodes = _topological(graph, set(self.names) | {v.name for v in inputs})
        self.steps = [
            _Step(n.op_type, tuple(n.input), tuple(n.output), _attrs(n))
            for n in nodes
            if n.op_type != "Constant"
        ]

    def _store(self, attr: str, name: str, value: Tensor, trainable: bool) -> None:
        if trainable and value.is_floating_point():
            self.register_parameter(attr, nn.Parameter(value))
        else:
            self.register_buffer(attr, value)
        self.names[name] = attr

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, ...]:
        """Run the graph on ``x``; returns its single output, or a tuple in the graph's output order."""
        env: dict[str, Tensor] = {name: getattr(self, attr) for name, attr in self.names.items()}
        env[self.input_name] = x.to(self.input_dtype)
        for step in self.steps:
            ctx = Ctx(self.opset, x.device, len(step.outputs))
            outs = HANDLERS[step.op]([env[v] if v else None for v in step.inputs], step.attrs, ctx)
            env.update({name: out for name, out in zip(step.outputs, outs, strict=False) if name})
        results = tuple(env[name] for name in self.output_names)
        return results[0] if len(results) == 1 else results


def _constant_value(attrs: Attrs) -> Tensor:
    if "value" in attrs:
        return torch.from_numpy(numpy_helper.to_array(attrs["value"]).copy())
    if "value_float" in attrs or "value_floats" in attrs:
        return torch.tensor(attrs.get("value_float", attrs.get("value_floats")), dtype=torch.float32)
    if "value_int" in attrs or "value_ints" in attrs:
        return torch.tensor(attrs.get("value_int", attrs.get("value_ints")), dtype=torch.int64)
    raise UnsupportedOperatorError(f"Constant with attributes {sorted(attrs)} is not supported")


def onnx_to_torch(path: Path, trainable: bool = False) -> OnnxGraphModule:
    """Load a YOLOv5 / YOLOv8 (or any graph within :data:`SUPPORTED_OPS`) ONNX file as a torch module.

    The module takes (N, 3, H, W) float in [0, 1] (as the graph's input) and returns the graph's outputs;
    gradients flow to the input. ``trainable=False`` (T frozen): weights are buffers; ``trainable=True``
    (T joint): the layer weights (Conv weight/bias, BN scale/bias, MatMul weights) become parameters, BN
    statistics and other constants (anchor grids, strides) stay buffers. Raises :class:`OnnxConversionError`
    for an unreadable file, :class:`UnsupportedOperatorError` naming the operator(s) outside the supported
    set (e.g. NonMaxSuppression in an export with NMS).
    """
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError and others for a non-ONNX file
        raise OnnxConversionError(f"{path} is not a readable ONNX model: {exc}") from exc
    check_supported(model)
    return OnnxGraphModule(model, trainable)
