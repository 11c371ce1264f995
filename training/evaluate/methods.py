"""Registry of restoration methods scored side by side: ``degraded batch -> restored batch``.

Every method maps ``(N, 3, H, W)`` float32 sRGB in [0, 1] to the same shape in [0, 1], for any H, W.
Methods are built lazily from a :class:`MethodContext` (where weights, checkpoints and the model store are),
so a method whose files are absent raises :class:`MethodUnavailableError` only when it is asked for.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import bm3d
import cv2
import numpy as np
import torch
import torch.nn.functional as F

from service.manifest import Manifest, read_manifest, sha256_file
from training.evaluate.errors import MethodUnavailableError, UnknownNameError
from training.evaluate.kair import load_dncnn_color_blind, load_ffdnet_color
from training.evaluate.metrics import estimate_noise_sigma
from training.paths import REPO_ROOT, dataset_dir

DiRVariant = Literal["full", "no_pilot", "r0_only", "autoencoder"]
"""The checkpoint variants of ``training.models.load_system``."""

Restorer = Callable[[torch.Tensor], torch.Tensor]
"""``(N, 3, H, W)`` float32 sRGB [0, 1] -> ``(N, 3, H, W)`` float32 sRGB [0, 1]."""

OracleRestorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(degraded, clean)`` -> restored: a peer told the true noise level, measured against the clean image."""

DEFAULT_STORE_ENTRY = "dir-restore"
NLM_H_PER_SIGMA = 0.8
NLM_H_FLOOR = 3.0
"""OpenCV NLM filter strength h = hColor = max(3, 0.8 x estimated sigma) on the 0-255 scale: the rule a
user applies (the wavelet estimate reads real and JPEG noise low, so the floor keeps NLM filtering)."""
NLM_ORACLE_H = (2.0, 3.0, 5.0, 8.0, 12.0, 18.0, 27.0)
"""The h grid of ``nlm-oracle``: the best of these per image, judged against the reference."""


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
    plain: Restorer | None = None
    oracle: OracleRestorer | None = None
    version: str | None = None
    fingerprint: str | None = None
    """sha256 of the weights file of a checkpoint or ONNX method (makes its scores cacheable), else None."""

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
    build: Callable[[MethodContext], Restorer] | None
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
        version = (
            plain.version
            if isinstance(plain, OnnxRestorer | PilotDecodeRestorer | OnnxDenoiseRestorer)
            else None
        )
        fingerprint = (
            plain.fingerprint
            if isinstance(
                plain, OnnxRestorer | PilotDecodeRestorer | OnnxDenoiseRestorer | CheckpointRestorer
            )
            else None
        )
        return BoundMethod(self.name, plain=plain, version=version, fingerprint=fingerprint)

    @property
    def oracle(self) -> bool:
        """True where the method needs the clean reference."""
        return self.build_oracle is not None


def _per_image(fn: Callable[[np.ndarray], np.ndarray]) -> Restorer:
    """Lift an HWC float32 [0, 1] numpy denoiser to a batched tensor restorer."""

    def restore(batch: torch.Tensor) -> torch.Tensor:
        outs = []
        for img in batch:
            hwc = np.ascontiguousarray(img.permute(1, 2, 0).cpu().numpy(), dtype=np.float32)
            outs.append(torch.from_numpy(np.ascontiguousarray(fn(hwc), dtype=np.float32)).permute(2, 0, 1))
        return torch.stack(outs).clamp(0.0, 1.0)

    return restore


def _sigma_hwc(hwc: np.ndarray) -> float:
    return estimate_noise_sigma(torch.from_numpy(hwc).permute(2, 0, 1))


def oracle_noise_sigma(degraded: torch.Tensor, clean: torch.Tensor) -> float:
    """The true noise level of one degraded image ``(1, 3, H, W)``: the standard deviation of the high-pass
    part of ``degraded - clean`` (residual minus its 9x9 local mean, so colour and tone shifts drop out)."""
    r = (degraded - clean).double()
    return float((r - F.avg_pool2d(r, 9, 1, 4, count_include_pad=False)).std())


def _oracle(fn: Callable[[torch.Tensor, float], torch.Tensor]) -> OracleRestorer:
    def restore(degraded: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        outs = [
            fn(d[None], oracle_noise_sigma(d[None], c[None])) for d, c in zip(degraded, clean, strict=True)
        ]
        return torch.cat(outs).clamp(0.0, 1.0)

    return restore


def _build_identity(ctx: MethodContext) -> Restorer:
    return lambda batch: batch.clamp(0.0, 1.0)


def _bm3d_image(hwc: np.ndarray, sigma: float) -> np.ndarray:
    return np.asarray(bm3d.bm3d_rgb(hwc, max(sigma, 1e-3), profile=bm3d.BM3DProfileLC()))


def _build_bm3d(ctx: MethodContext) -> Restorer:
    return _per_image(lambda hwc: _bm3d_image(hwc, _sigma_hwc(hwc)))


def _build_bm3d_oracle(ctx: MethodContext) -> OracleRestorer:
    def one(degraded: torch.Tensor, sigma: float) -> torch.Tensor:
        return _per_image(lambda hwc: _bm3d_image(hwc, sigma))(degraded)

    return _oracle(one)


def _nlm_image(hwc: np.ndarray, h: float) -> np.ndarray:
    """OpenCV coloured NLM (template 7, search 21) at strength h = hColor (0-255): (H, W, 3) RGB [0, 1]."""
    bgr = np.ascontiguousarray((hwc[..., ::-1] * 255.0 + 0.5).clip(0, 255).astype(np.uint8))
    out = cv2.fastNlMeansDenoisingColored(bgr, None, h, h, 7, 21)
    return out[..., ::-1].astype(np.float32) / 255.0


def _build_nlm(ctx: MethodContext) -> Restorer:
    return _per_image(
        lambda hwc: _nlm_image(hwc, max(NLM_H_FLOOR, NLM_H_PER_SIGMA * _sigma_hwc(hwc) * 255.0))
    )


def _build_nlm_oracle(ctx: MethodContext) -> OracleRestorer:
    def best(degraded: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        outs = []
        for img, ref in zip(degraded, clean, strict=True):
            hwc = img.permute(1, 2, 0).numpy()
            tries = [torch.from_numpy(_nlm_image(hwc, h)).permute(2, 0, 1) for h in NLM_ORACLE_H]
            outs.append(min(tries, key=lambda t: float(((t - ref) ** 2).mean())))
        return torch.stack(outs)

    return best


def _build_dncnn(ctx: MethodContext) -> Restorer:
    net = load_dncnn_color_blind(ctx.kair_zoo).to(ctx.device)

    def restore(batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return net(batch.to(ctx.device)).clamp(0.0, 1.0).cpu()

    return restore


def _build_ffdnet(ctx: MethodContext) -> Restorer:
    net = load_ffdnet_color(ctx.kair_zoo).to(ctx.device)

    def restore(batch: torch.Tensor) -> torch.Tensor:
        sigma = torch.tensor([estimate_noise_sigma(img) * 255.0 for img in batch])
        with torch.inference_mode():
            return net(batch.to(ctx.device), sigma.to(ctx.device)).clamp(0.0, 1.0).cpu()

    return restore


def _build_ffdnet_oracle(ctx: MethodContext) -> OracleRestorer:
    net = load_ffdnet_color(ctx.kair_zoo).to(ctx.device)

    def one(degraded: torch.Tensor, sigma: float) -> torch.Tensor:
        with torch.inference_mode():
            return net(degraded.to(ctx.device), torch.tensor([sigma * 255.0], device=ctx.device)).cpu()

    return _oracle(one)


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


def _checkpoint_builder(variant: DiRVariant) -> Callable[[MethodContext], Restorer]:
    def build(ctx: MethodContext) -> Restorer:
        if ctx.run_dir is None:
            raise MethodUnavailableError(
                f"method needs a training run folder (--run RUNDIR) for variant {variant!r}"
            )
        if not ctx.run_dir.exists():
            raise MethodUnavailableError(f"run folder not found: {ctx.run_dir}")
        try:
            from training.errors import DiRError
            from training.models import checkpoint_name, load_system
        except ImportError as exc:
            raise MethodUnavailableError(f"training.models is not importable: {exc}") from exc
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


def _version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.findall(r"\d+|[^\d.\-_]+", version))


def latest_store_entry(model_store: Path, name: str = DEFAULT_STORE_ENTRY) -> Path:
    """The highest version folder ``model_store/<name>/<version>/`` holding a manifest.json."""
    root = model_store / name
    versions = sorted(
        (d for d in root.glob("*") if (d / "manifest.json").is_file()), key=lambda d: _version_key(d.name)
    )
    if not versions:
        raise MethodUnavailableError(f"no model_store entry with a manifest.json under {root}")
    return versions[-1]


def _verified_sha256(entry_dir: Path, manifest: Manifest, name: str) -> str:
    """sha256 of the graph ``entry_dir/name``, checked against the manifest where it records one."""
    path = entry_dir / name
    if not path.is_file():
        raise MethodUnavailableError(f"ONNX file not found: {path}")
    digest = sha256_file(path)
    expected = manifest.file_sha256(name)
    if expected is not None and digest != expected:
        raise MethodUnavailableError(f"sha256 of {path} does not match its manifest")
    return digest


def _read_entry(entry_dir: Path) -> Manifest:
    """The manifest of a model_store entry folder (MethodUnavailableError where it has none)."""
    if not (entry_dir / "manifest.json").is_file():
        raise MethodUnavailableError(f"no manifest.json in model_store entry {entry_dir}")
    return read_manifest(entry_dir)


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


class OnnxRestorer(_EntryMethod):
    """Scores a model_store entry exactly as shipped: its ONNX file through onnxruntime (CPU EP).

    Inputs are reflect-padded on the bottom/right to the manifest's ``size_multiple`` and the output cropped
    back. Two-pass entries (manifest ``guide``) get the whole image's ``guide_mean``: the spatial mean of
    the guide graph's output on the padded image. Each file's sha256 is checked against the manifest when
    recorded.
    """

    def __init__(self, entry_dir: Path) -> None:
        import onnxruntime as ort

        self.manifest = _read_entry(entry_dir)
        self.entry_dir = entry_dir
        self.guide = self.manifest.guide
        graphs = [self.manifest.onnx_file] + ([self.guide.onnx_file] if self.guide else [])
        digests = [_verified_sha256(entry_dir, self.manifest, name) for name in graphs]
        # Score-cache key: the serving graph's sha256, combined with the guide graph's for two-pass entries.
        joined = "".join(digests).encode()
        self.fingerprint = digests[0] if len(digests) == 1 else hashlib.sha256(joined).hexdigest()
        providers = ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(entry_dir / graphs[0]), providers=providers)
        self.guide_session = (
            ort.InferenceSession(str(entry_dir / graphs[1]), providers=providers) if self.guide else None
        )
        self.input_name = self.manifest.inputs[0].name
        outputs = [o.name for o in self.manifest.outputs]
        self.output_name = "restored" if "restored" in outputs else outputs[0]
        self.multiple = self.manifest.size_multiple

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


PILOT_GRAPH = "dfrnet.onnx"
"""Component graph of a DiR entry: image (N, 3, H, W) sRGB [0, 1] -> pilot DfR (N, C, H/s, W/s)."""
DECODER_GRAPH = "decoder.onnx"
"""Component graph of a DiR entry: a representation (N, C, H/s, W/s), e.g. r+, -> restored (N, 3, H, W)."""


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
        import onnxruntime as ort

        self.manifest = _read_entry(entry_dir)
        self.entry_dir = entry_dir
        missing = [g for g in (PILOT_GRAPH, DECODER_GRAPH) if not (entry_dir / g).is_file()]
        if missing:
            raise MethodUnavailableError(
                f"model_store entry {entry_dir} lacks the component graph(s) {', '.join(missing)} "
                "(written by dir-export beside the serving graphs)"
            )
        digests = [_verified_sha256(entry_dir, self.manifest, g) for g in (PILOT_GRAPH, DECODER_GRAPH)]
        self.fingerprint = hashlib.sha256("".join(digests).encode()).hexdigest()
        providers = ["CPUExecutionProvider"]
        self.pilot_session = ort.InferenceSession(str(entry_dir / PILOT_GRAPH), providers=providers)
        self.decoder_session = ort.InferenceSession(str(entry_dir / DECODER_GRAPH), providers=providers)
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
        import onnxruntime as ort

        self.manifest = _read_entry(entry_dir)
        spec = self.manifest.extra.get("denoise")
        if not isinstance(spec, dict) or not (entry_dir / str(spec.get("onnx_file"))).is_file():
            raise MethodUnavailableError(
                f"model_store entry {entry_dir} has no denoise graph (extra.denoise)"
            )
        graph = str(spec["onnx_file"])
        self.fingerprint = _verified_sha256(entry_dir, self.manifest, graph)
        self.session = ort.InferenceSession(str(entry_dir / graph), providers=["CPUExecutionProvider"])
        self.multiple = self.manifest.size_multiple

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` sRGB [0, 1] -> denoised ``(N, 3, H, W)`` sRGB clipped to [0, 1]."""
        h, w = batch.shape[-2:]
        x = _pad_to_multiple(batch, self.multiple).contiguous().numpy().astype(np.float32)
        (out,) = self.session.run(["restored"], {"image": x})
        return torch.from_numpy(out)[..., :h, :w].clamp(0.0, 1.0)


def _build_store_default(ctx: MethodContext) -> Restorer:
    return OnnxRestorer(latest_store_entry(ctx.model_store))


def _build_store_pilot(ctx: MethodContext) -> Restorer:
    return PilotDecodeRestorer(latest_store_entry(ctx.model_store))


def _build_store_denoise(ctx: MethodContext) -> Restorer:
    return OnnxDenoiseRestorer(latest_store_entry(ctx.model_store))


def _onnx_entry_builder(entry_dir: Path) -> Callable[[MethodContext], Restorer]:
    def build(ctx: MethodContext) -> Restorer:
        return OnnxRestorer(entry_dir)

    return build


METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec(
            "identity", "Degraded input", "reference", _build_identity, "the degraded input, unchanged"
        ),
        MethodSpec(
            "bm3d",
            "BM3D",
            "peer",
            _build_bm3d,
            "bm3d package 4.x, bm3d_rgb (opponent colour space), low-complexity profile, sigma per image by "
            "wavelet-MAD (skimage estimate_sigma)",
        ),
        MethodSpec(
            "nlm",
            "OpenCV NLM",
            "peer",
            _build_nlm,
            "cv2.fastNlMeansDenoisingColored, template 7, search 21, h = hColor = max(3, 0.8 x est. sigma) "
            "(0-255)",
        ),
        MethodSpec(
            "nlm-oracle",
            "OpenCV NLM (oracle h)",
            "peer",
            None,
            f"OpenCV NLM with h = hColor the best of {NLM_ORACLE_H} per image against the reference: the "
            "peer's best case",
            build_oracle=_build_nlm_oracle,
        ),
        MethodSpec("dncnn", "DnCNN-B (colour)", "peer", _build_dncnn, "KAIR dncnn_color_blind.pth, blind"),
        MethodSpec(
            "ffdnet",
            "FFDNet (colour)",
            "peer",
            _build_ffdnet,
            "KAIR ffdnet_color.pth, sigma map = estimated sigma",
        ),
        MethodSpec(
            "bm3d-oracle",
            "BM3D (oracle sigma)",
            "peer",
            None,
            "BM3D told the true noise level (high-pass std of degraded - clean): the peer's best case",
            build_oracle=_build_bm3d_oracle,
        ),
        MethodSpec(
            "ffdnet-oracle",
            "FFDNet (oracle sigma)",
            "peer",
            None,
            "FFDNet with its noise map at the true noise level: the peer's best case",
            build_oracle=_build_ffdnet_oracle,
        ),
        MethodSpec(
            "autoencoder",
            "Auto-Encoder",
            "dir",
            _checkpoint_builder("autoencoder"),
            "plain encoder/decoder of equal size, same budget (run folder)",
        ),
        MethodSpec(
            "dir-r0",
            "DiR: r0 only",
            "dir",
            _checkpoint_builder("r0_only"),
            "decoder on the baseline DiR r0 (run folder)",
            (True, False, False),
        ),
        MethodSpec(
            "dir-no-pilot",
            "DiR: r0 + A, no pilot",
            "dir",
            _checkpoint_builder("no_pilot"),
            "alignment network guided by r0 (run folder)",
            (True, True, False),
        ),
        MethodSpec(
            "dir-full",
            "DiR: full (r0 + A + pilot)",
            "dir",
            _checkpoint_builder("full"),
            "the paper's full method, PyTorch checkpoint (run folder)",
            (True, True, True),
        ),
        MethodSpec(
            "onnx",
            "DiR shipped (ONNX)",
            "shipped",
            _build_store_default,
            f"highest version of model_store/{DEFAULT_STORE_ENTRY}, run by onnxruntime",
        ),
        MethodSpec(
            "onnx-denoise",
            "DiR shipped, denoise mode (ONNX)",
            "shipped",
            _build_store_denoise,
            f"the denoise graph of the highest model_store/{DEFAULT_STORE_ENTRY} (what "
            "/v1/restore?mode=denoise serves: noise and JPEG removed, the camera's colour kept), onnxruntime",
        ),
        MethodSpec(
            "onnx-pilot",
            "Diagnostic: D*(DfR(x)), pilot decoded",
            "diagnostic",
            _build_store_pilot,
            f"DIAGNOSTIC, neither the paper's method nor the service's default output: {PILOT_GRAPH} then "
            f"{DECODER_GRAPH} of the highest model_store/{DEFAULT_STORE_ENTRY} entry (onnxruntime), "
            "skipping DiRNet and the alignment network A (the denoise mode of entries without a trained "
            "denoiser)",
        ),
    )
}


def method_names() -> list[str]:
    """Registered method names, in table order, diagnostics included (``onnx:<entry_dir>`` is accepted
    beside these)."""
    return list(METHODS)


def get_method(name: str) -> MethodSpec:
    """The spec of a registered method, or of ``onnx:<entry_dir>`` (any model_store entry folder)."""
    if name.startswith("onnx:"):
        entry = Path(name.removeprefix("onnx:"))
        return MethodSpec(
            name, f"ONNX {entry.parent.name}/{entry.name}", "shipped", _onnx_entry_builder(entry), str(entry)
        )
    if name not in METHODS:
        raise UnknownNameError("method", name, [*METHODS, "onnx:<entry_dir>"])
    return METHODS[name]


def resolve_methods(names: str) -> list[MethodSpec]:
    """Comma-separated names (or ``all``) -> specs; ``all`` is every registered method except the
    ``diagnostic`` family, which runs only when named."""
    if names.strip() == "all":
        return [spec for spec in METHODS.values() if spec.family != "diagnostic"]
    return [get_method(n.strip()) for n in names.split(",") if n.strip()]
