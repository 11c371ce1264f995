"""Detection task losses: hand-computed values on tiny cases, the assignment rules, gradients, and a fit."""

from __future__ import annotations

import math

import pytest
import torch

from training.detect.loss import (
    assign_targets,
    decoded_distillation_loss,
    distillation_loss,
    yolo_fastestv2_loss,
)
from training.detect.model import YoloFastestV2


def bce(x: float, t: float) -> float:
    s = 1 / (1 + math.exp(-x))
    return -(t * math.log(s) + (1 - t) * math.log(1 - s))


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_one_image_one_box_one_anchor_by_hand() -> None:
    # One 2x2 scale of stride 16 (a 32x32 input), one 16x16-pixel anchor (1x1 cell), 3 classes.
    # Box: centre (8, 8) px = (0.5, 0.5) cells, 16x8 px = 1 x 0.5 cells: centre of cell (0, 0), so no
    # neighbour cells are added; w/h ratios to the anchor (1, 2) < 4 so the anchor matches.
    reg = torch.zeros(1, 4, 2, 2)
    reg[0, 3, 0, 0] = logit(0.25)  # ph = (0.25 * 2)^2 * 1 = 0.25 cells; px, py = 0.5, pw = 1
    obj = torch.tensor([[[[1.0, -2.0], [0.5, 0.0]]]])
    cls = torch.zeros(1, 3, 2, 2)
    cls[0, :, 0, 0] = torch.tensor([0.2, 1.0, -0.5])
    targets = torch.tensor([[0.0, 1.0, 0.25, 0.25, 0.5, 0.25]])
    out = yolo_fastestv2_loss([(reg, obj, cls)], targets, anchors=[[(16.0, 16.0)]], strides=[16])

    # Pred (0.5, 0.5, 1, 0.25) vs target (0.5, 0.5, 1, 0.5): same centre, IoU = 0.25 / 0.5.
    iou = 0.25 / (0.5 + 0.25 - 0.25)
    v = 4 / math.pi**2 * (math.atan(1 / 0.5) - math.atan(1 / 0.25)) ** 2
    ciou = iou - 0 - v / (1 - iou + v) * v
    box = 3.2 * (1 - ciou)
    obj_expected = 64 * (bce(1.0, ciou) + bce(-2.0, 0) + bce(0.5, 0) + bce(0.0, 0)) / 4
    log_z = math.log(math.exp(0.2) + math.exp(1.0) + math.exp(-0.5))
    cls_expected = 32 * (log_z - 1.0)
    assert out["box"].item() == pytest.approx(box, rel=1e-5)
    assert out["obj"].item() == pytest.approx(obj_expected, rel=1e-5)
    assert out["cls"].item() == pytest.approx(cls_expected, rel=1e-5)
    assert out["loss"].item() == pytest.approx(box + obj_expected + cls_expected, rel=1e-5)


def test_assignment_adds_neighbour_cells_and_skips_far_anchors() -> None:
    # Centre (2.25, 3.75) cells on an 8x8 grid: left (x 1.25 -> cell 1) and lower (y 4) neighbours join.
    targets = torch.tensor([[1.0, 7.0, 2.25 / 8, 3.75 / 8, 2 / 8, 2 / 8]])
    anchors = torch.tensor([[2.0, 2.0], [9.0, 9.0]])  # the second is 4.5x the box: no match
    b, a, gy, gx, c, tbox = assign_targets(targets, anchors, 8, 8)
    cells = sorted(zip(gy.tolist(), gx.tolist(), strict=True))
    assert cells == [(3, 1), (3, 2), (4, 2)]
    assert b.tolist() == [1, 1, 1] and a.tolist() == [0, 0, 0] and c.tolist() == [7, 7, 7]
    by_cell = {(int(y), int(x)): row.tolist() for y, x, row in zip(gy, gx, tbox, strict=True)}
    assert by_cell[(3, 1)] == pytest.approx([1.25, 0.75, 2.0, 2.0])
    assert by_cell[(4, 2)] == pytest.approx([0.25, -0.25, 2.0, 2.0])


def test_zero_targets_leave_only_objectness_negatives() -> None:
    gen = torch.Generator().manual_seed(0)
    outs = [
        (
            torch.randn(2, 12, s, s, generator=gen),
            torch.randn(2, 3, s, s, generator=gen),
            torch.randn(2, 80, s, s),
        )
        for s in (4, 2)
    ]
    out = yolo_fastestv2_loss(outs, torch.zeros(0, 6))
    assert out["box"].item() == 0.0 and out["cls"].item() == 0.0
    per_scale = [sum(bce(x, 0.0) for x in o.flatten().tolist()) / o.numel() for _, o, _ in outs]
    assert out["obj"].item() == pytest.approx(64 * (per_scale[0] + 0.4 * per_scale[1]), rel=1e-5)
    assert out["loss"].item() == pytest.approx(out["obj"].item())


def test_bad_targets_are_refused() -> None:
    outs = [(torch.zeros(1, 12, 2, 2), torch.zeros(1, 3, 2, 2), torch.zeros(1, 80, 2, 2))] * 2
    with pytest.raises(ValueError, match=r"\(M, 6\)"):
        yolo_fastestv2_loss(outs, torch.zeros(3, 5))


def _labelled_batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    image = torch.rand(1, 3, 160, 160, generator=gen)
    targets = torch.tensor([[0, 0, 0.3, 0.4, 0.2, 0.5], [0, 16, 0.7, 0.6, 0.35, 0.3]])
    return image, targets


def test_gradients_are_finite_and_reach_every_head() -> None:
    torch.manual_seed(0)
    model = YoloFastestV2()
    image, targets = _labelled_batch()
    out = yolo_fastestv2_loss(model(image), targets)
    out["loss"].backward()
    for name in ("output_reg_layers", "output_obj_layers", "output_cls_layers"):
        grad = getattr(model, name).weight.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_a_few_sgd_steps_fit_one_labelled_image() -> None:
    torch.manual_seed(0)
    model = YoloFastestV2().eval()  # frozen BN statistics: a batch of one
    image, targets = _labelled_batch()
    opt = torch.optim.SGD(model.parameters(), lr=2e-3, momentum=0.9)
    losses = []
    for _ in range(20):
        out = yolo_fastestv2_loss(model(image), targets)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_distillation_by_hand_and_teacher_gets_no_gradient() -> None:
    # One scale, 1 anchor, a 1x2 grid, 2 classes. Teacher objectness p = (0.5, 0.75).
    t_reg = torch.tensor([[[[0.0, 1.0]], [[0.0, 0.0]], [[1.0, 0.0]], [[0.0, 0.0]]]], requires_grad=True)
    t_obj = torch.tensor([[[[0.0, logit(0.75)]]]], requires_grad=True)
    t_cls = torch.tensor([[[[0.0, 1.0]], [[0.0, -1.0]]]], requires_grad=True)
    s_reg = torch.tensor([[[[0.5, 1.0]], [[0.0, 0.0]], [[1.0, 2.0]], [[0.0, 0.0]]]], requires_grad=True)
    s_obj = torch.tensor([[[[1.0, -1.0]]]], requires_grad=True)
    s_cls = torch.tensor([[[[0.0, 0.0]], [[1.0, 0.0]]]], requires_grad=True)
    out = distillation_loss([(s_reg, s_obj, s_cls)], [(t_reg, t_obj, t_cls)])
    obj = (bce(1.0, 0.5) + bce(-1.0, 0.75)) / 2
    l1 = (0.5 / 4, 2.0 / 4)  # per cell: |diff| summed over tx, ty, tw, th, / 4
    box = (0.5 * l1[0] + 0.75 * l1[1]) / 1.25
    # cell 0: teacher (0.5, 0.5), student softmax(0, 1); cell 1: teacher softmax(1, -1), student (0.5, 0.5)
    s0 = (1 / (1 + math.e), math.e / (1 + math.e))
    t1 = (math.e / (math.e + 1 / math.e), (1 / math.e) / (math.e + 1 / math.e))
    kl0 = 0.5 * math.log(0.5 / s0[0]) + 0.5 * math.log(0.5 / s0[1])
    kl1 = t1[0] * math.log(t1[0] / 0.5) + t1[1] * math.log(t1[1] / 0.5)
    cls = (0.5 * kl0 + 0.75 * kl1) / 1.25
    assert out["obj"].item() == pytest.approx(obj, rel=1e-5)
    assert out["box"].item() == pytest.approx(box, rel=1e-5)
    assert out["cls"].item() == pytest.approx(cls, rel=1e-5)
    assert out["loss"].item() == pytest.approx(obj + box + cls, rel=1e-5)
    out["loss"].backward()
    assert all(t.grad is None for t in (t_reg, t_obj, t_cls))
    assert all(s.grad is not None and torch.isfinite(s.grad).all() for s in (s_reg, s_obj, s_cls))


def test_decoded_distillation_yolov5_by_hand() -> None:
    # Two rows, one class: cx, cy, w, h, objectness, class probability.
    teacher = torch.tensor([[[10.0, 10.0, 4.0, 4.0, 0.8, 0.5], [0.0, 0.0, 1.0, 1.0, 0.1, 1.0]]])
    student = torch.tensor([[[12.0, 10.0, 4.0, 2.0, 0.6, 0.5], [1.0, 1.0, 1.0, 1.0, 0.2, 0.9]]])
    out = decoded_distillation_loss(student, teacher, "yolov5", box_scale=2.0)

    def bce_p(s: float, t: float) -> float:
        return -(t * math.log(s) + (1 - t) * math.log(1 - s))

    score = (bce_p(0.6, 0.8) + bce_p(0.5, 0.5) + bce_p(0.2, 0.1) + bce_p(0.9, 1.0)) / 4
    w = (0.8 * 0.5, 0.1 * 1.0)
    box = (w[0] * (4 / 4 / 2) + w[1] * (2 / 4 / 2)) / (w[0] + w[1])
    assert out["score"].item() == pytest.approx(score, rel=1e-5)
    assert out["box"].item() == pytest.approx(box, rel=1e-5)
    assert out["loss"].item() == pytest.approx(score + box, rel=1e-5)


def test_decoded_distillation_yolov8_by_hand() -> None:
    # (N, 4 + C, B) with C = 2, B = 2; weight = max class score of the teacher.
    teacher = torch.tensor([[[5.0, 0.0], [5.0, 0.0], [2.0, 1.0], [2.0, 1.0], [0.9, 0.2], [0.1, 0.4]]])
    student = teacher.clone()
    student[0, 0, 0] = 7.0  # box 0 off by 2 px in cx
    student[0, 4, 1] = 0.3
    out = decoded_distillation_loss(student, teacher, "yolov8")

    def bce_p(s: float, t: float) -> float:
        return -(t * math.log(s) + (1 - t) * math.log(1 - s))

    score = (bce_p(0.9, 0.9) + bce_p(0.1, 0.1) + bce_p(0.3, 0.2) + bce_p(0.4, 0.4)) / 4
    box = 0.9 * (2 / 4) / (0.9 + 0.4)
    assert out["score"].item() == pytest.approx(score, rel=1e-5)
    assert out["box"].item() == pytest.approx(box, rel=1e-5)
    with pytest.raises(ValueError, match="layout"):
        decoded_distillation_loss(student, teacher, "ssd")  # type: ignore[arg-type]
