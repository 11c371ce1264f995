"""Eq. 8 with the detector in the loop: the objective ``dir-train align`` minimises, and its task losses.

L+ = |r+ - r*|_1 + gamma1 * L_task + gamma2 * |D*(r+) - y*|_1 (:func:`training.losses.stage2_loss`), where
r+ = A(r0, pilot) on the degraded x, r* = DfRNet(y*), and L_task compares the detector's outputs on
D*(r+) (pre-processed as the detector's entry says) with the labels (``detect``), with its own outputs on
the clean y* (``distill``), or both.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor, nn

from modelstore.manifest import Manifest
from training.detect import loss as losses
from training.errors import ConfigError
from training.losses import stage2_loss
from training.models import DiRSystem
from training.train.align.config import AlignLoss
from training.train.align.detector import prepare_input

#: (detector outputs on D*(r+), its outputs on y* (no gradient), targets (M, 6)) -> terms, key "loss".
TaskLoss = Callable[[Any, Any, Tensor], dict[str, Tensor]]
LOSSES = ("detect", "distill", "both")
#: Loss choices that need labelled images (boxes).
LABELLED_LOSSES = ("detect", "both")


def task_loss(name: str, layout: str | None = None, input_size: int = 1) -> TaskLoss:
    """The task loss ``--loss NAME`` from :mod:`training.detect.loss`: ``detect`` (Yolo-FastestV2's
    detection loss on the labels), ``distill`` (the detector's outputs on D*(r+) match those on y*) or
    ``both`` (their sum). ``layout`` None: the detector gives Yolo-FastestV2's raw per-scale outputs;
    ``yolov5`` / ``yolov8``: it gives decoded rows (an ONNX entry converted to torch; its first output is
    used), distilled with box distances in fractions of ``input_size``; ``detect`` needs raw outputs.
    Raises :class:`ConfigError` for an unknown choice or a labelled loss on decoded rows."""
    if name not in LOSSES:
        raise ConfigError(f"--loss {name!r}: choose one of {LOSSES}")
    if layout is not None and name in LABELLED_LOSSES:
        raise ConfigError(f"--loss {name} needs a Yolo-FastestV2 detector (raw outputs); use --loss distill")

    def detect(outputs: Any, teacher: Any, targets: Tensor) -> dict[str, Tensor]:
        return dict(losses.yolo_fastestv2_loss(outputs, targets))

    def distill(outputs: Any, teacher: Any, targets: Tensor) -> dict[str, Tensor]:
        if layout is None:
            return dict(losses.distillation_loss(outputs, teacher))
        student, target = (o[0] if isinstance(o, list | tuple) else o for o in (outputs, teacher))
        rows: Literal["yolov5", "yolov8"] = "yolov8" if layout == "yolov8" else "yolov5"
        return dict(losses.decoded_distillation_loss(student, target, rows, float(input_size)))

    def both(outputs: Any, teacher: Any, targets: Tensor) -> dict[str, Tensor]:
        d, s = detect(outputs, teacher, targets), distill(outputs, teacher, targets)
        terms = {f"detect_{k}": v for k, v in d.items()} | {f"distill_{k}": v for k, v in s.items()}
        return {"loss": d["loss"] + s["loss"], **terms}

    return {"detect": detect, "distill": distill, "both": both}[name]


def _freeze(module: nn.Module) -> None:
    module.requires_grad_(False)
    module.eval()


def _detached(outputs: Any) -> Any:
    """``outputs`` (a tensor or nested lists / tuples of tensors) with every tensor detached."""
    if isinstance(outputs, Tensor):
        return outputs.detach()
    if isinstance(outputs, list | tuple):
        return type(outputs)(_detached(o) for o in outputs)
    return outputs


class AlignObjective(nn.Module):
    """Stage II with a detector T: trains A (and T when ``joint``); DiRNet, DfRNet, D* (and any denoise
    parts) stay frozen in eval mode. T's batch-norm statistics stay frozen in both modes (eval mode; with
    a few images per batch their running estimates would drift), so ``joint`` trains T's weights only.

    ``forward(x, clean, targets)``: x the degraded and ``clean`` the clean images (B, 3, S, S) sRGB [0, 1],
    S a multiple of 4; targets (M, 6) [image, class, cx, cy, w, h] normalised to the images -> loss terms
    (``loss``, ``latent_l1``, ``image_l1``, ``task`` and the task's own terms as ``task_<name>``).
    """

    def __init__(
        self,
        system: DiRSystem,
        detector: nn.Module,
        detector_manifest: Manifest,
        task: TaskLoss,
        loss: AlignLoss,
        joint: bool,
    ) -> None:
        super().__init__()
        self.system = system
        self.detector = detector
        self.manifest = detector_manifest
        self.task = task
        self.loss_cfg = loss
        self.joint = joint
        for name in system.parts:
            if name != "alignment":
                _freeze(system.get_submodule(name))
        # The distillation target is the detector as installed: a frozen copy when T trains.
        self.teacher = copy.deepcopy(detector) if joint else detector
        _freeze(self.teacher)
        if not joint:
            _freeze(detector)

    def train(self, mode: bool = True) -> AlignObjective:
        """Only A switches mode; every other part (T included) stays in eval mode."""
        super().train(mode)
        for name in self.system.parts:
            if name != "alignment":
                self.system.get_submodule(name).eval()
        self.detector.eval()
        self.teacher.eval()
        return self

    def trainable(self) -> dict[str, list[nn.Parameter]]:
        """The parameters each optimiser group trains: ``alignment``, and ``detector`` when joint."""
        groups = {"alignment": list(self.system.get_submodule("alignment").parameters())}
        if self.joint:
            groups["detector"] = list(self.detector.parameters())
        return groups

    def forward(self, x: Tensor, clean: Tensor, targets: Tensor) -> dict[str, Tensor]:
        """See the class docstring."""
        s = self.system
        with torch.no_grad():
            r0 = s.get_submodule("dirnet")(x)[0]
            pilot = s.get_submodule("dfrnet")(x)[0]
            r_star = s.get_submodule("dfrnet")(clean)[0]
            teacher_in, _ = prepare_input(clean, targets, self.manifest)
            teacher_out = _detached(self.teacher(teacher_in))
        r_plus = s.get_submodule("alignment")(r0, pilot)
        decoded = s.get_submodule("decoder")(r_plus)
        terms: dict[str, Tensor] = {}

        def task_term(image: Tensor) -> Tensor:
            student_in, moved = prepare_input(image.clamp(0.0, 1.0), targets, self.manifest)
            terms.update(self.task(self.detector(student_in), teacher_out, moved))
            return terms["loss"]

        cfg = self.loss_cfg
        out = stage2_loss(r_plus, r_star, decoded, clean, cfg.gamma1, cfg.gamma2, task_loss=task_term)
        out.pop("fit_l1")
        out |= {f"task_{k}": v for k, v in terms.items() if k != "loss"}
        return out
