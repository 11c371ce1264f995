"""DiR methods: trained checkpoints of a run folder (PyTorch) and shipped model_store entries (ONNX Runtime,
sessions from :mod:`modelstore.runner`, files verified by :mod:`modelstore.store`).

Every restorer maps ``(N, 3, H, W)`` float32 sRGB in [0, 1] to the same shape in [0, 1], for any H, W.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F

from modelstore.errors import ModelStoreError
from modelstore.manifest import DECODER_FILE, MANIFEST_NAME, PILOT_FILE, Manifest, read_manifest, sha256_file
from modelstore.runner import entry_session
from modelstore.store import version_dirs
from training.errors import DiRError
from training.evaluate.errors import MethodUnavailableError
from training.evaluate.methods.base import MethodContext, RestoreFn
from training.models import checkpoint_name, load_system
from training.models.system import Variant

DEFAULT_STORE_ENTRY = "dir-restore"
_CPU = ["CPUExecutionProvider"]


class SupportsRestore(Protocol):
    """What the harness needs of ``training.models.DiRSystem``."""

    def restore(self, image: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) [0, 1] -> (N, 3, H, W) [0, 1], any H, W."""
        ...


class CheckpointRestorer:
    """A trained :class:`training.models.DiRSystem` as a restorer; ``fingerprint`` = sha256 of its file."""

    def __init__(self, system: SupportsRestore, device: str, fingerprint: str) -> None:
        self.system = system
        self.device = device
        self.fingerprint = fingerprint

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` [0, 1] -> ``(N, 3, H, W)`` [0, 1], any H, W."""
        with torch.inference_mode():
            return self.system.restore(batch.to(self.device)).clamp(0.0, 1.0).cpu()


def checkpoint_builder(variant: Variant) -> Callable[[MethodContext], RestoreFn]:
    """The builder of the run folder's checkpoint of ``variant`` (stage2.pt, ablation-<variant>.pt)."""

    def build(ctx: MethodContext) -> RestoreFn:
        if ctx.run_dir is None:
            raise MethodUnavailableError(
                f"method needs a training run folder (--run RUNDIR) for variant {variant!r}"
            )
        if not ctx.run_dir.exists():
            raise MethodUnavailableError(f"run folder not found: {ctx.run_dir}")
        try:
            system = load_system(ctx.run_dir, variant=variant, device=ctx.device)
        except (DiRError, OSError, KeyError, RuntimeError) as exc:
            raise MethodUnavailableError(
                f"cannot load variant {variant!r} from {ctx.run_dir}: {exc}"
            ) from exc
        stage = "stage2" if variant == "full" else "ablation"
        file = ctx.run_dir if ctx.run_dir.is_file() else ctx.run_dir / checkpoint_name(stage, variant)
        return CheckpointRestorer(system, ctx.device, sha256_file(file))

    return build


def latest_store_entry(model_store: Path, name: str = DEFAULT_STORE_ENTRY) -> Path:
    """The highest version folder ``model_store/<name>/<version>/`` holding a manifest.json."""
    versions = version_dirs(model_store, name)
    if not versions:
        raise MethodUnavailableError(f"no model_store entry with a manifest.json under {model_store / name}")
    return versions[-1]


def _read_entry(entry_dir: Path) -> Manifest:
    """The manifest of a model_store entry folder (MethodUnavailableError where it has none)."""
    if not (entry_dir / MANIFEST_NAME).is_file():
        raise MethodUnavailableError(f"no manifest.json in model_store entry {entry_dir}")
    return read_manifest(entry_dir)


def _sessions(
    entry_dir: Path, manifest: Manifest, graphs: list[str]
) -> tuple[list[ort.InferenceSession], list[str]]:
    """CPU sessions and sha256 digests of the entry's ``graphs`` (each checked against the manifest where it
    records one); a missing file or a digest mismatch raises :class:`MethodUnavailableError`."""
    try:
        opened = [entry_session(entry_dir, manifest, g, _CPU) for g in graphs]
    except ModelStoreError as exc:
        raise MethodUnavailableError(exc.message) from exc
    return [s for s, _ in opened], [d for _, d in opened]


def _pad_to_multiple(batch: torch.Tensor, multiple: int) -> torch.Tensor:
    """Reflect-pad ``(N, 3, H, W)`` on the bottom/right so that H and W are multiples of ``multiple``."""
    h, w = batch.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    return F.pad(batch, (0, pw, 0, ph), mode="reflect") if ph or pw else batch


class _EntryMethod:
    """What the methods that run a model_store entry share: its manifest (set by the subclass)."""

    manifest: Manifest

    @property
    def version(self) -> str:
        """``<name>/<version>`` of the entry."""
        return f"{self.manifest.name}/{self.manifest.version}"


def aligned_detector(entry_dir: Path, manifest: Manifest) -> Path | None:
    """The detector entry folder a task-aligned entry names (``extra.aligned_for.detector_entry``,
    ``NAME@VERSION`` in the entry's own model store), None for other entries; raises
    :class:`MethodUnavailableError` when it is not installed (scoring without it would misreport)."""
    recorded = str((manifest.aligned_for or {}).get("detector_entry") or "")
    if not recorded:
        return None
    name, _, version = recorded.partition("@")
    folder = entry_dir.parent.parent / name / version
    if not version or not (folder / MANIFEST_NAME).is_file():
        raise MethodUnavailableError(
            f"{entry_dir} was aligned with detector {recorded}, which is not installed at {folder}"
        )
    return folder


class OnnxRestorer(_EntryMethod):
    """Scores a model_store entry exactly as shipped: its ONNX file through onnxruntime (CPU EP).

    Inputs are reflect-padded on the bottom/right to the manifest's ``size_multiple`` and the output cropped
    back. Two-pass entries (manifest ``guide``) get the whole image's ``guide_mean``: the spatial mean of
    the guide graph's output on the padded image. Each file's sha256 is checked against the manifest when
    recorded. ``task_detector``: see :func:`aligned_detector`.
    """

    def __init__(self, entry_dir: Path) -> None:
        self.manifest = _read_entry(entry_dir)
        self.entry_dir = entry_dir
        self.guide = self.manifest.guide
        graphs = [self.manifest.onnx_file] + ([self.guide.onnx_file] if self.guide else [])
        sessions, digests = _sessions(entry_dir, self.manifest, graphs)
        # Score-cache key: the serving graph's sha256, combined with the guide graph's for two-pass entries.
        joined = "".join(digests).encode()
        self.fingerprint = digests[0] if len(digests) == 1 else hashlib.sha256(joined).hexdigest()
        self.session = sessions[0]
        self.guide_session = sessions[1] if self.guide else None
        self.input_name = self.manifest.inputs[0].name
        outputs = [o.name for o in self.manifest.outputs]
        self.output_name = "restored" if "restored" in outputs else outputs[0]
        self.multiple = self.manifest.size_multiple
        self.task_detector = aligned_detector(entry_dir, self.manifest)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` [0, 1] -> ``(N, 3, H, W)`` [0, 1]."""
        h, w = batch.shape[-2:]
        x = _pad_to_multiple(batch, self.multiple)
        feed = {self.input_name: x.contiguous().numpy().astype(np.float32)}
        if self.guide is not None and self.guide_session is not None:
            guide_in = {self.guide.inputs[0].name: feed[self.input_name]}
            (features,) = self.guide_session.run([self.guide.outputs[0].name], guide_in)
            feed[self.guide.mean_input] = np.asarray(features.mean(axis=(2, 3)), dtype=np.float32)
        (out,) = self.session.run([self.output_name], feed)
        return torch.from_numpy(out)[..., :h, :w].clamp(0.0, 1.0)


class PilotDecodeRestorer(_EntryMethod):
    """Diagnostic, neither the paper's method nor the service's default output: D*(DfR(x)).

    Runs a model_store entry's component graphs ``dfrnet.onnx`` (image -> pilot, the mean of DfRNet) and
    ``decoder.onnx`` (the frozen decoder D*, fed the pilot where the served model feeds it r+) through
    onnxruntime (CPU EP), skipping DiRNet and the alignment network A. Input ``(N, 3, H, W)`` float32 sRGB
    [0, 1], reflect-padded on the bottom/right to the manifest's ``size_multiple`` and cropped back; output
    the same shape, clipped to [0, 1]. Each graph's sha256 is checked against the manifest when recorded;
    ``fingerprint`` is the sha256 of the two graphs' digests.
    """

    def __init__(self, entry_dir: Path) -> None:
        self.manifest = _read_entry(entry_dir)
        self.entry_dir = entry_dir
        missing = [g for g in (PILOT_FILE, DECODER_FILE) if not (entry_dir / g).is_file()]
        if missing:
            raise MethodUnavailableError(
                f"model_store entry {entry_dir} lacks the component graph(s) {', '.join(missing)} "
                "(written by dir-export beside the serving graphs)"
            )
        sessions, digests = _sessions(entry_dir, self.manifest, [PILOT_FILE, DECODER_FILE])
        self.fingerprint = hashlib.sha256("".join(digests).encode()).hexdigest()
        self.pilot_session, self.decoder_session = sessions
        self.multiple = self.manifest.size_multiple

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` sRGB [0, 1] -> D*(DfR(x)) ``(N, 3, H, W)`` sRGB clipped to [0, 1]."""
        h, w = batch.shape[-2:]
        x = _pad_to_multiple(batch, self.multiple).contiguous().numpy().astype(np.float32)
        (pilot,) = self.pilot_session.run(None, {self.pilot_session.get_inputs()[0].name: x})
        (out,) = self.decoder_session.run(None, {self.decoder_session.get_inputs()[0].name: pilot})
        return torch.from_numpy(out)[..., :h, :w].clamp(0.0, 1.0)


class OnnxDenoiseRestorer(_EntryMethod):
    """A model_store entry's ``denoise`` graph (manifest ``extra.denoise``), as ``/v1/restore?mode=denoise``
    serves it, through onnxruntime (CPU EP): ``(N, 3, H, W)`` sRGB [0, 1] -> the same, clipped to [0, 1].

    Inputs are reflect-padded on the bottom/right to the manifest's ``size_multiple`` and cropped back; one
    pass, no guide. The graph's sha256 is checked against the manifest and is the ``fingerprint``.
    """

    def __init__(self, entry_dir: Path) -> None:
        self.manifest = _read_entry(entry_dir)
        spec = self.manifest.denoise
        if spec is None or not (entry_dir / spec.onnx_file).is_file():
            raise MethodUnavailableError(
                f"model_store entry {entry_dir} has no denoise graph (extra.denoise)"
            )
        (self.session,), (self.fingerprint,) = _sessions(entry_dir, self.manifest, [spec.onnx_file])
        self.multiple = self.manifest.size_multiple

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` sRGB [0, 1] -> denoised ``(N, 3, H, W)`` sRGB clipped to [0, 1]."""
        h, w = batch.shape[-2:]
        x = _pad_to_multiple(batch, self.multiple).contiguous().numpy().astype(np.float32)
        (out,) = self.session.run(["restored"], {"image": x})
        return torch.from_numpy(out)[..., :h, :w].clamp(0.0, 1.0)


def build_store_default(ctx: MethodContext) -> RestoreFn:
    """:class:`OnnxRestorer` of the highest ``dir-restore`` entry."""
    return OnnxRestorer(latest_store_entry(ctx.model_store))


def build_store_pilot(ctx: MethodContext) -> RestoreFn:
    """:class:`PilotDecodeRestorer` of the highest ``dir-restore`` entry."""
    return PilotDecodeRestorer(latest_store_entry(ctx.model_store))


def build_store_denoise(ctx: MethodContext) -> RestoreFn:
    """:class:`OnnxDenoiseRestorer` of the highest ``dir-restore`` entry."""
    return OnnxDenoiseRestorer(latest_store_entry(ctx.model_store))


def onnx_entry_builder(entry_dir: Path) -> Callable[[MethodContext], RestoreFn]:
    """The builder of :class:`OnnxRestorer` on one entry folder."""

    def build(ctx: MethodContext) -> RestoreFn:
        return OnnxRestorer(entry_dir)

    return build
