"""ONNX export of a trained DiR system into a model_store entry (``dir-export``).

``export_run(run, out_dir, version)`` writes, for the full method:

* ``model.onnx``: the fused serving graph, inputs ``image`` (N, 3, H, W) float32 sRGB [0, 1] with H, W
  multiples of ``size_multiple`` (4) and ``guide_mean`` (N, m2*F) float32; outputs ``restored``
  (N, 3, H, W) [0, 1], ``r_plus``, ``r0``, ``pilot`` (N, C, H/4, W/4). Batch and spatial axes are dynamic.
* ``guide.onnx`` (role "serve-guide"): ``image`` -> ``guide_features`` (N, m2*F, H/4, W/4), the guided
  layers' per-position guide features. Their spatial mean over a whole image is its ``guide_mean``, so
  every tile of an image can use the image's global pooling (two-pass tiled serving).
* ``model.fp16.onnx`` (role "serve-fp16", when its parity holds): ``model.onnx`` in float16, float32 I/O.
* ``dirnet.onnx`` (image -> r0), ``dfrnet.onnx`` (image -> pilot; r* when given a clean image),
  ``alignment.onnx`` (r0, pilot -> r_plus), ``decoder.onnx`` (r_plus -> restored): role "component".
* ``manifest.json`` (modelstore/manifest.py schema) with sha256 of every file, the training config and the
  evaluation numbers found in the run folder (``scores.json``, written by ``dir-train score``).

Every graph passes ``onnx.checker`` and is compared with PyTorch on real degraded images (``model.onnx`` as
served: fed the spatial mean of ``guide.onnx``'s output, against PyTorch on the whole image); a max-abs
error above the tolerance raises :class:`~training.errors.ExportError`.

The other way (the PyTorch system rebuilt from an entry's ``model.onnx``) is
:func:`training.models.checkpoint.system_from_entry`.
"""

from training.export.onnx_export import (
    PARITY_TOLERANCE_FP32,
    SERVING_OUTPUTS,
    ExportReport,
    export_run,
    export_system,
)

__all__ = [
    "PARITY_TOLERANCE_FP32",
    "SERVING_OUTPUTS",
    "ExportReport",
    "export_run",
    "export_system",
]
