"""ONNX Runtime vs PyTorch eager on the same weights and the same computation, for ``benchmarks.serve``."""

from __future__ import annotations

import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modelstore.runner import make_session
from modelstore.store import ModelEntry
from training.models import load_system
from training.models.checkpoint import system_from_entry


def _single_pass_onnx(system: Any, path: Path) -> None:
    """Export ``system`` as one graph image -> restored that pools over its own input (the computation
    of PyTorch's whole-image ``system(image)``), for the like-for-like single-pass comparison only."""

    class _Restored(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.system = system

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return self.system(image)["restored"]

    axes = {"image": {0: "N", 2: "H", 3: "W"}, "restored": {0: "N", 2: "H", 3: "W"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Restored().eval(),
            (torch.rand(1, 3, 64, 64),),
            str(path),
            input_names=["image"],
            output_names=["restored"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )


def ort_vs_torch(
    entry: ModelEntry, threads: int, image: np.ndarray, repeats: int, torch_run: Path | None
) -> dict[str, Any]:
    """Median latency of one whole-image (1, 3, H, W) restoration, ONNX Runtime vs PyTorch eager, each
    pair running the same computation on the same weights, interleaved in one run.

    Weights: ``torch_run`` (a run folder, for ``load_system``) when given, else the PyTorch system rebuilt
    from the entry's own model.onnx (``training.models.checkpoint.system_from_entry``), so both runtimes hold
    the shipped weights. Rows, for a two-pass entry: ``two_pass`` (ORT guide.onnx then model.onnx with the
    features' mean, against torch ``guide_features`` then ``system(image, guide_mean)``: what serving
    computes) and ``single_pass`` (a graph that pools over its own input, exported to a temporary file,
    against torch ``system(image)``); a single-pass entry has only ``single_pass`` (its model.onnx).
    ORT sessions are built as the service builds them (``modelstore.runner.make_session``).
    """
    torch.set_num_threads(threads)
    if torch_run is not None:
        system = load_system(torch_run, "full", device="cpu")
        weights = f"weights of run {torch_run.name} against the entry's graphs"
    else:
        system = system_from_entry(entry.path)
        weights = f"the shipped weights of {entry.ref} (PyTorch rebuilt from its model.onnx)"
    x = np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32)
    tensor = torch.from_numpy(x)
    guide = entry.manifest.guide
    pairs: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if guide is None:
            single = make_session(entry.path / entry.manifest.onnx_file, ["CPUExecutionProvider"], threads)
        else:
            serve = make_session(entry.path / entry.manifest.onnx_file, ["CPUExecutionProvider"], threads)
            guide_session = make_session(entry.path / guide.onnx_file, ["CPUExecutionProvider"], threads)

            def ort_two_pass() -> object:
                (features,) = guide_session.run(None, {"image": x})
                return serve.run(None, {"image": x, guide.mean_input: features.mean(axis=(2, 3))})

            def torch_two_pass() -> object:
                guide_mean = system.guide_features(tensor).mean(dim=(2, 3))
                return system(tensor, guide_mean)

            pairs["two_pass"] = (ort_two_pass, torch_two_pass)
            _single_pass_onnx(system, Path(tmp) / "single.onnx")
            single = make_session(Path(tmp) / "single.onnx", ["CPUExecutionProvider"], threads)
        pairs["single_pass"] = (lambda: single.run(None, {"image": x}), lambda: system(tensor))
        times: dict[str, dict[str, list[float]]] = {k: {"ort": [], "torch": []} for k in pairs}
        with torch.inference_mode():
            for ort_fn, torch_fn in pairs.values():
                ort_fn(), torch_fn()
            for _ in range(repeats):
                for name, (ort_fn, torch_fn) in pairs.items():
                    for side, fn in (("ort", ort_fn), ("torch", torch_fn)):
                        started = time.perf_counter()
                        fn()
                        times[name][side].append(time.perf_counter() - started)
    rows = {}
    for name, sides in times.items():
        ort_ms = statistics.median(sides["ort"]) * 1000
        torch_ms = statistics.median(sides["torch"]) * 1000
        rows[name] = {"ort_ms": ort_ms, "torch_ms": torch_ms, "ort_over_torch": ort_ms / torch_ms}
    return {"input_shape": list(x.shape), "threads": threads, "repeats": repeats, "weights": weights, **rows}
