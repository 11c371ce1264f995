"""ONNX export of a trained DiR system into a model_store entry (``dir-export``).

``export_run(run, out_dir, version)`` writes, for the full method:

* ``model.onnx``: the fused serving graph, input ``image`` (N, 3, H, W) float32 sRGB [0, 1] with H, W
  multiples of ``size_multiple`` (4); outputs ``restored`` (N, 3, H, W) [0, 1], ``r_plus``, ``r0``,
  ``pilot`` (N, C, H/4, W/4). Batch and spatial axes are dynamic.
* ``dirnet.onnx`` (image -> r0), ``dfrnet.onnx`` (image -> pilot; r* when given a clean image),
  ``alignment.onnx`` (r0, pilot -> r_plus), ``decoder.onnx`` (r_plus -> restored): role "component".
* ``manifest.json`` (service/manifest.py schema) with sha256 of every file, the training config and the
  evaluation numbers found in the run folder (``scores.json``, written by ``dir-train score``).

Every graph passes ``onnx.checker`` and is compared with PyTorch on real degraded images; a max-abs error
above the tolerance raises :class:`~training.train.errors.ExportError`.
"""

from training.export.onnx_export import (
    PARITY_TOLERANCE_FP32,
    SERVING_OUTPUTS,
    ExportReport,
    export_run,
    export_system,
)

__all__ = ["PARITY_TOLERANCE_FP32", "SERVING_OUTPUTS", "ExportReport", "export_run", "export_system"]
