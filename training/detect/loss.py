"""Detection task losses for Stage II (Eq. 8's task term): Yolo-FastestV2's supervised loss and two
label-free distillation losses (raw head outputs, or decoded rows of a user's YOLOv5 / YOLOv8 graph).

Written from the method of upstream ``dog-qiuqiu/Yolo-FastestV2`` ``utils/loss.py`` (YOLOv5-style label
assignment, CIoU box loss, IoU-aware objectness); see :func:`yolo_fastestv2_loss` for the exact rules.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from training.detect.model import ANCHORS, STRIDES

BOX_WEIGHT = 3.2
OBJ_WEIGHT = 64.0
CLS_WEIGHT = 32.0
SCALE_BALANCE = (1.0, 0.4)  # objectness weight of the stride-16 and stride-32 heads
ANCHOR_RATIO = 4.0  # a box matches an anchor when max(w/aw, aw/w, h/ah, ah/h) < 4
NEIGHBOUR_MARGIN = 0.5
EPS = 1e-7

ScaleOutput = tuple[Tensor, Tensor, Tensor]


def ciou(pred: Tensor, target: Tensor) -> Tensor:
    """Complete IoU of paired boxes ``pred``, ``target`` (K, 4) as cx, cy, w, h (any unit) -> (K,) in
    [-1.5, 1]: IoU - centre distance^2 / enclosing diagonal^2 - alpha * v, with v the aspect-ratio term
    4/pi^2 (atan(wt/ht) - atan(wp/hp))^2 and alpha = v / (1 - IoU + v) taken as a constant (no gradient)."""
    p1, p2 = pred[:, :2] - pred[:, 2:] / 2, pred[:, :2] + pred[:, 2:] / 2
    t1, t2 = target[:, :2] - target[:, 2:] / 2, target[:, :2] + target[:, 2:] / 2
    inter = (torch.minimum(p2, t2) - torch.maximum(p1, t1)).clamp(min=0).prod(1)
    union = pred[:, 2:].prod(1) + target[:, 2:].prod(1) - inter + EPS
    iou = inter / union
    diag2 = ((torch.maximum(p2, t2) - torch.minimum(p1, t1)) ** 2).sum(1) + EPS
    rho2 = ((pred[:, :2] - target[:, :2]) ** 2).sum(1)
    v = (4 / math.pi**2) * (
        torch.atan(target[:, 2] / (target[:, 3] + EPS)) - torch.atan(pred[:, 2] / (pred[:, 3] + EPS))
    ) ** 2
    with torch.no_grad():
        alpha = v / (1 - iou + v + EPS)
    return iou - rho2 / diag2 - alpha * v


def assign_targets(
    targets: Tensor, anchors_grid: Tensor, height: int, width: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """YOLOv5-style assignment on one scale.

    ``targets`` (M, 6) [image, class, cx, cy, w, h] normalised; ``anchors_grid`` (A, 2) anchor w, h in grid
    cells. A target goes to every anchor whose width and height ratios both lie within 1/4..4, at the cell
    holding its centre and also at the left/upper neighbour when the centre lies in the left/upper half of
    its cell (and more than one cell from the border), and at the right/lower neighbour for the right/lower
    half likewise. Returns (image, anchor, gy, gx, class) index tensors (K,) and the target boxes (K, 4) as
    cx, cy relative to the assigned cell's corner and w, h, all in grid cells.
    """
    gain = targets.new_tensor([width, height, width, height])
    boxes = targets[:, 2:6] * gain
    ratio = boxes[None, :, 2:] / anchors_grid[:, None]  # (A, M, 2)
    match = torch.maximum(ratio, 1 / ratio).amax(2) < ANCHOR_RATIO
    anchor_idx, target_idx = match.nonzero(as_tuple=True)
    gxy = boxes[target_idx, :2]
    inverse = gain[:2] - gxy
    frac, frac_inv = gxy % 1.0, inverse % 1.0
    offsets = [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0)]
    use = [
        torch.ones_like(gxy[:, 0], dtype=torch.bool),
        (frac[:, 0] < NEIGHBOUR_MARGIN) & (gxy[:, 0] > 1),
        (frac[:, 1] < NEIGHBOUR_MARGIN) & (gxy[:, 1] > 1),
        (frac_inv[:, 0] < NEIGHBOUR_MARGIN) & (inverse[:, 0] > 1),
        (frac_inv[:, 1] < NEIGHBOUR_MARGIN) & (inverse[:, 1] > 1),
    ]
    keep = torch.stack(use)  # (5, K)
    sel, k = keep.nonzero(as_tuple=True)
    shift = gxy.new_tensor(offsets)[sel] * NEIGHBOUR_MARGIN
    cell = (gxy[k] - shift).long()
    gx, gy = cell[:, 0].clamp(0, width - 1), cell[:, 1].clamp(0, height - 1)
    rows = target_idx[k]
    tbox = torch.cat((gxy[k] - cell, boxes[rows, 2:]), 1)
    return targets[rows, 0].long(), anchor_idx[k], gy, gx, targets[rows, 1].long(), tbox


def yolo_fastestv2_loss(
    outputs: Sequence[ScaleOutput],
    targets: Tensor,
    anchors: Sequence[Sequence[tuple[float, float]]] = ANCHORS,
    strides: Sequence[int] = STRIDES,
    balance: Sequence[float] = SCALE_BALANCE,
) -> dict[str, Tensor]:
    """Yolo-FastestV2's training loss on its raw outputs; returns scalars "loss", "box", "obj", "cls".

    ``outputs``: ``YoloFastestV2.forward``'s list per scale (stride 16 then 32) of reg (N, 4A, H, W),
    obj (N, A, H, W), cls (N, C, H, W) logits. ``targets`` (M, 6) float: [image index, class id, cx, cy, w,
    h], box coordinates normalised to [0, 1] of the network input (M may be 0). ``anchors`` per scale in
    input pixels, ``strides`` per scale.

    Per scale (anchors divided by the stride, i.e. in grid cells), :func:`assign_targets` lists the positive
    (image, anchor, cell) triples. For each: box = (sigmoid(txy) * 2 - 0.5, (sigmoid(twh) * 2)^2 * anchor)
    relative to the cell (the decode of ``model.decode_scale``), box term = mean over positives of
    1 - CIoU(box, target); the objectness target is CIoU clamped to >= 0 (detached) at positives, 0
    elsewhere (a cell hit twice keeps the last); objectness term = BCE-with-logits mean over all N*A*H*W
    positions times ``balance[scale]`` (1.0, 0.4); class term = cross-entropy of the cell's class logits
    (softmax shared by its anchors) against the class, mean over positives. Terms are summed over scales
    and weighted box 3.2, obj 64, cls 32 (upstream's gains); "loss" is their sum (per batch, not x N).
    """
    if targets.ndim != 2 or targets.shape[1] != 6:
        raise ValueError(f"targets must be (M, 6) [image, class, cx, cy, w, h], got {tuple(targets.shape)}")
    if len(outputs) != len(anchors) or len(outputs) != len(strides) or len(outputs) > len(balance):
        raise ValueError(
            f"{len(outputs)} output scales for {len(anchors)} anchor sets, {len(strides)} strides"
        )
    zero = outputs[0][0].sum() * 0.0
    box_loss, obj_loss, cls_loss = zero, zero, zero
    targets = targets.to(outputs[0][0])
    for (reg, obj, cls), scale_anchors, stride, weight in zip(
        outputs, anchors, strides, balance, strict=False
    ):
        n, a, h, w = obj.shape
        anchors_grid = reg.new_tensor(scale_anchors) / stride
        b, ai, gy, gx, tcls, tbox = assign_targets(targets, anchors_grid, h, w)
        tobj = torch.zeros_like(obj)
        if len(b):
            t = reg.reshape(n, a, 4, h, w)[b, ai, :, gy, gx].sigmoid()
            pbox = torch.cat((t[:, :2] * 2 - 0.5, (t[:, 2:] * 2) ** 2 * anchors_grid[ai]), 1)
            iou = ciou(pbox, tbox)
            box_loss = box_loss + (1.0 - iou).mean()
            tobj[b, ai, gy, gx] = iou.detach().clamp(min=0).to(tobj.dtype)
            cls_loss = cls_loss + F.cross_entropy(cls[b, :, gy, gx], tcls)
        obj_loss = obj_loss + F.binary_cross_entropy_with_logits(obj, tobj) * weight
    box_loss, obj_loss, cls_loss = box_loss * BOX_WEIGHT, obj_loss * OBJ_WEIGHT, cls_loss * CLS_WEIGHT
    return {"loss": box_loss + obj_loss + cls_loss, "box": box_loss, "obj": obj_loss, "cls": cls_loss}


def _weighted_mean(values: Tensor, weights: Tensor) -> Tensor:
    return (values * weights).sum() / (weights.sum() + EPS)


def distillation_loss(student: Sequence[ScaleOutput], teacher: Sequence[ScaleOutput]) -> dict[str, Tensor]:
    """Label-free: make the detector's raw outputs on D*(r+) (``student``) match those on the clean image
    (``teacher``, detached here); returns scalars "loss", "box", "obj", "cls" (loss = their plain sum).

    Both are lists per scale of reg (N, 4A, H, W), obj (N, A, H, W), cls (N, C, H, W) logits. Per scale,
    with p = sigmoid(teacher obj) (N, A, H, W): obj = BCE-with-logits(student obj, p) mean over positions;
    box = L1 of student vs teacher reg (the raw tx, ty, tw, th), mean over the 4 values, averaged with
    weights p per anchor; cls = KL(softmax(teacher cls) || softmax(student cls)) per cell, averaged with
    weights max over anchors of p. Weighting by p keeps background cells from dominating. Terms are
    averaged over scales.
    """
    if len(student) != len(teacher):
        raise ValueError(f"student has {len(student)} scales, teacher {len(teacher)}")
    box, obj, cls = [], [], []
    for (s_reg, s_obj, s_cls), (t_reg, t_obj, t_cls) in zip(student, teacher, strict=True):
        n, a, h, w = s_obj.shape
        p = t_obj.detach().sigmoid()
        obj.append(F.binary_cross_entropy_with_logits(s_obj, p))
        l1 = (s_reg - t_reg.detach()).abs().reshape(n, a, 4, h, w).mean(2)
        box.append(_weighted_mean(l1, p))
        t_log = t_cls.detach().log_softmax(1)
        kl = (t_log.exp() * (t_log - s_cls.log_softmax(1))).sum(1)  # (N, H, W)
        cls.append(_weighted_mean(kl, p.amax(1)))
    terms = {"box": torch.stack(box).mean(), "obj": torch.stack(obj).mean(), "cls": torch.stack(cls).mean()}
    return {"loss": terms["box"] + terms["obj"] + terms["cls"], **terms}


def decoded_distillation_loss(
    student: Tensor,
    teacher: Tensor,
    layout: Literal["yolov5", "yolov8"] = "yolov5",
    box_scale: float = 1.0,
) -> dict[str, Tensor]:
    """Distillation on decoded rows, for a graph that only exposes them; returns "loss", "box", "score".

    ``layout="yolov5"``: (N, B, 5 + C) rows of cx, cy, w, h (input pixels), objectness, C class
    probabilities, all in [0, 1] after the box; scores = objectness and class columns, teacher weight =
    objectness x max class probability. ``layout="yolov8"``: (N, 4 + C, B) with C class scores in [0, 1]
    (no objectness); weight = max class score. score = BCE(student scores, teacher scores) mean;
    box = L1 of the 4 box values / ``box_scale`` (e.g. the input size, to work in fractions of the image),
    mean over the 4, averaged with the teacher weight per box. The teacher is detached; loss = box + score.
    """
    if student.shape != teacher.shape or student.ndim != 3:
        raise ValueError(
            f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} must be equal, 3-D"
        )
    if layout == "yolov8":
        student, teacher = student.transpose(1, 2), teacher.transpose(1, 2)
    elif layout != "yolov5":
        raise ValueError(f"unknown layout {layout!r}; use 'yolov5' or 'yolov8'")
    teacher = teacher.detach()
    t_scores = teacher[..., 4:].clamp(0, 1)
    s_scores = student[..., 4:].clamp(EPS, 1 - EPS)
    weight = t_scores[..., 0] * t_scores[..., 1:].amax(-1) if layout == "yolov5" else t_scores.amax(-1)
    score = F.binary_cross_entropy(s_scores, t_scores)
    box = _weighted_mean((student[..., :4] - teacher[..., :4]).abs().mean(-1) / box_scale, weight)
    return {"loss": box + score, "box": box, "score": score}
