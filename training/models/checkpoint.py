"""Rebuild the PyTorch DiR system from a model_store entry's ``model.onnx`` (no run folder needed).

``dir-export`` names every weight of the serving graph after its PyTorch parameter
(``system.<part>.<parameter>``, e.g. ``system.dfrnet.trunk.0.weight``), and the manifest records the model
config that built it (``training.config.model``). So an entry carries everything needed to rebuild the full
system in PyTorch: for benchmarks against PyTorch eager on the exact shipped weights, for re-exporting new
graphs of a shipped model, or for fine-tuning it, when its training run folder is not on this machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from modelstore.errors import ModelStoreError
from modelstore.manifest import read_manifest
from modelstore.store import verify_files
from training.errors import CheckpointError
from training.models import VARIANT_PARTS, DiRSystem, model_config_from_dict

#: The prefix ``ServingGraph`` puts before the system's own parameter names in the exported graph.
_PREFIX = "system."


def _initializers(path: Path) -> dict[str, np.ndarray]:
    """Every initializer of the ONNX graph at ``path``, by name, as NumPy arrays."""
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError, OSError ... for unreadable files
        raise CheckpointError(f"cannot read ONNX graph {path}: {exc}") from exc
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def system_from_entry(entry_dir: str | Path, device: str | torch.device = "cpu") -> DiRSystem:
    """The full-variant :class:`DiRSystem` whose weights are the entry's ``model.onnx``, in eval mode.

    ``entry_dir``: a dir-restore model_store entry (manifest.json + model.onnx, sha256 verified first).
    Raises :class:`CheckpointError` when the manifest has no model config, a file fails its sha256, or the
    graph's weights do not cover the system's parameters exactly (names and shapes; the exporter stores
    weights with identical values once, under one name, which only happens for untrained layers).
    """
    entry = Path(entry_dir)
    try:
        manifest = read_manifest(entry)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{entry}: cannot read manifest.json: {exc}") from exc
    model_cfg: Any = manifest.training.get("config", {}).get("model")
    if not isinstance(model_cfg, dict):
        raise CheckpointError(f"{entry}: the manifest records no training.config.model to rebuild from")
    try:
        verify_files(entry, manifest)
    except ModelStoreError as exc:
        raise CheckpointError(str(exc)) from exc
    system = DiRSystem(model_config_from_dict(model_cfg), "full")
    weights = _initializers(entry / manifest.onnx_file)
    state: dict[str, torch.Tensor] = {}
    expected = {
        f"{part}.{name}": tuple(p.shape)
        for part in VARIANT_PARTS["full"]
        for name, p in system.get_submodule(part).state_dict().items()
    }
    for name, shape in expected.items():
        array = weights.get(_PREFIX + name)
        if array is None:
            raise CheckpointError(
                f"{entry / manifest.onnx_file}: no weight named {_PREFIX + name} (the exporter merges "
                "weights with identical values, such as untrained layers, into one; such a graph cannot "
                "be rebuilt)"
            )
        if tuple(array.shape) != shape:
            raise CheckpointError(
                f"{entry / manifest.onnx_file}: {_PREFIX + name} has shape {tuple(array.shape)}, "
                f"the manifest's model config needs {shape}"
            )
        state[name] = torch.from_numpy(array.copy())
    for part in VARIANT_PARTS["full"]:
        prefix = part + "."
        sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        system.get_submodule(part).load_state_dict(sub, strict=True)
    denoise = manifest.denoise
    if denoise is not None and denoise.encoder == "denoiser":
        system = _add_denoiser(system, entry / denoise.onnx_file)
    return system.to(device).eval()


def _add_denoiser(system: DiRSystem, denoise_graph: Path) -> DiRSystem:
    """A copy of ``system`` with the denoise parts (denoiser, and the gated decode's detail gate) whose
    weights are ``denoise_graph``'s ``system.<part>.*``."""
    out = DiRSystem(system.cfg, "full", denoiser=True)
    for part in system.parts:
        out.get_submodule(part).load_state_dict(system.get_submodule(part).state_dict())
    weights = _initializers(denoise_graph)
    for part in out.parts[len(system.parts) :]:
        prefix = f"{_PREFIX}{part}."
        sub = {
            k[len(prefix) :]: torch.from_numpy(v.copy()) for k, v in weights.items() if k.startswith(prefix)
        }
        try:
            out.get_submodule(part).load_state_dict(sub, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(
                f"{denoise_graph}: its {part} weights do not fit the model config: {exc}"
            ) from exc
    return out
