"""What every restoration method shares: its context, its registry entry and the restorer types.

Every method maps ``(N, 3, H, W)`` float32 sRGB in [0, 1] to the same shape in [0, 1], for any H, W.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from training.evaluate.errors import MethodUnavailableError
from training.paths import REPO_ROOT, dataset_dir

RestoreFn = Callable[[torch.Tensor], torch.Tensor]
"""``(N, 3, H, W)`` float32 sRGB [0, 1] -> ``(N, 3, H, W)`` float32 sRGB [0, 1]."""

OracleRestorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(degraded, clean)`` -> restored: a peer told the true noise level, measured against the clean image."""


@dataclass(frozen=True)
class MethodContext:
    """Where methods find their files.

    ``run_dir``: a training run folder (stage2.pt, ablation-<variant>.pt) for the checkpoint-backed methods;
    ``model_store``: the model_store root; ``kair_zoo``: the KAIR weights folder.
    """

    run_dir: Path | None = None
    model_store: Path = REPO_ROOT / "model_store"
    kair_zoo: Path = field(default_factory=lambda: dataset_dir("kair_denoisers") / "model_zoo")
    device: str = "cpu"


@dataclass(frozen=True)
class BoundMethod:
    """A built method: ``(degraded, clean or None) -> restored``; ``version`` names a model_store entry."""

    name: str
    plain: RestoreFn | None = None
    oracle: OracleRestorer | None = None
    version: str | None = None
    fingerprint: str | None = None
    """sha256 of the weights file of a checkpoint or ONNX method (makes its scores cacheable), else None."""
    task_detector: Path | None = None
    """The detector entry a task-aligned model_store entry was aligned with (``detect`` scores its output
    with it, as ``/v1/detect?model=`` does), else None (the installed detector)."""

    def __call__(self, degraded: torch.Tensor, clean: torch.Tensor | None) -> torch.Tensor:
        """Restore ``degraded`` (N, 3, H, W) [0, 1]; ``clean`` is used only by oracle peers."""
        if self.oracle is not None:
            if clean is None:
                raise MethodUnavailableError(f"{self.name} needs a clean reference")
            return self.oracle(degraded, clean)
        assert self.plain is not None
        return self.plain(degraded)


@dataclass(frozen=True)
class MethodSpec:
    """One registered method.

    ``family``: "reference" (the degraded input), "peer" (classical / pretrained denoisers), "dir" (our
    checkpoints), "shipped" (an ONNX model_store entry) or "diagnostic" (a part of a shipped entry run on
    its own to locate a loss: neither the paper's method nor the service's default output; left out of
    ``--methods all``). ``table5`` holds the paper's Table 5 row flags
    (r0, A, pilot) for the DiR ablations.
    """

    name: str
    label: str
    family: str
    build: Callable[[MethodContext], RestoreFn] | None
    description: str
    table5: tuple[bool, bool, bool] | None = None
    build_oracle: Callable[[MethodContext], OracleRestorer] | None = None
    """Set (``build`` None) for peers told the true noise level; they run only where a reference exists."""

    def bind(self, ctx: MethodContext) -> BoundMethod:
        """Build the method once (raises :class:`MethodUnavailableError` where its files are absent)."""
        if self.build_oracle is not None:
            return BoundMethod(self.name, oracle=self.build_oracle(ctx))
        if self.build is None:
            raise MethodUnavailableError(f"method {self.name} has no builder")
        plain = self.build(ctx)
        version = getattr(plain, "version", None)
        fingerprint = getattr(plain, "fingerprint", None)
        detector = getattr(plain, "task_detector", None)
        return BoundMethod(self.name, plain, None, version, fingerprint, detector)

    @property
    def oracle(self) -> bool:
        """True where the method needs the clean reference."""
        return self.build_oracle is not None
