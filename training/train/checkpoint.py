"""Checkpoints: module weights, optimiser, step and every RNG state, written atomically.

A checkpoint is a dict readable with ``torch.load(weights_only=True)``: ``stage``, ``variant`` (restoration
checkpoints only, read by :func:`training.models.load_system`), ``model_config``, ``config``, ``step``,
``steps``, ``modules`` ({name: state_dict}), ``optimizer``, ``rng`` ({"torch", "cuda"}: the model's own
randomness; training batches are a function of the step index, see :class:`training.train.data.StepBatches`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from training.errors import CheckpointError


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` via a temporary file and an atomic rename."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint on CPU (raises :class:`CheckpointError` when missing or unreadable)."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(ckpt, dict) or "modules" not in ckpt or "step" not in ckpt:
        raise CheckpointError(f"{path} is not a dir-train checkpoint")
    return ckpt


def rng_state() -> dict[str, Any]:
    """The global torch RNG and (where present) the CUDA RNGs."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
