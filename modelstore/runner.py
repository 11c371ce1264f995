"""ONNX Runtime sessions for a model_store entry's graphs, shared by the service's ``RestoreModel`` and by
evaluation's methods that score shipped entries. Load failures raise
:class:`modelstore.errors.ModelStoreError`.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from modelstore.errors import ModelStoreError
from modelstore.manifest import Manifest
from modelstore.store import verified_sha256


def choose_providers(requested: list[str] | None) -> list[str]:
    """ONNX Runtime providers: ``requested`` when given (validated), else CUDA when present, then CPU."""
    available = ort.get_available_providers()
    if requested:
        missing = [p for p in requested if p not in available]
        if missing:
            raise ModelStoreError(f"providers {missing} are not available (available: {available})")
        return requested
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def make_session(
    onnx_path: Path, providers: list[str] | None, threads: int, spinning: bool = True, arena: bool = True
) -> ort.InferenceSession:
    """An ONNX Runtime session with ``threads`` intra-op threads; load failures become ``ModelStoreError``.

    ``spinning=False`` makes idle intra-op threads sleep instead of spin-waiting for the next run.
    ``arena=False`` builds it without ONNX Runtime's CPU memory arena (which keeps the largest run's buffers
    for the life of the session): memory goes back after each run, at the cost of allocating every run.
    """
    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = arena
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(
            str(onnx_path), sess_options=options, providers=choose_providers(providers)
        )
    except (RuntimeError, ValueError, ort.capi.onnxruntime_pybind11_state.Fail) as exc:
        raise ModelStoreError(f"ONNX Runtime cannot load {onnx_path}: {exc}") from exc


def entry_session(
    entry_dir: Path, manifest: Manifest, graph: str, providers: list[str] | None = None, threads: int = 0
) -> tuple[ort.InferenceSession, str]:
    """``(session, sha256)`` of the entry's graph file ``graph``, its sha256 checked against the manifest
    where it records one (:func:`modelstore.store.verified_sha256`). ``threads=0`` keeps ONNX Runtime's
    default intra-op thread count."""
    digest = verified_sha256(entry_dir, manifest, graph)
    return make_session(entry_dir / graph, providers, threads), digest
