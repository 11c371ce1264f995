"""Registry of restoration methods scored side by side: ``degraded batch -> restored batch``.

Every method maps ``(N, 3, H, W)`` float32 sRGB in [0, 1] to the same shape in [0, 1], for any H, W.
Methods are built lazily from a :class:`MethodContext` (where weights, checkpoints and the model store are),
so a method whose files are absent raises :class:`MethodUnavailableError` only when it is asked for.
Families: :mod:`.classic` (identity, BM3D, NLM), :mod:`.learned` (DnCNN, FFDNet), :mod:`.entries` (DiR
checkpoints and shipped model_store entries); shared types in :mod:`.base`.
"""

from __future__ import annotations

from pathlib import Path

from modelstore.manifest import DECODER_FILE, PILOT_FILE
from training.evaluate.errors import UnknownNameError
from training.evaluate.methods.base import MethodContext, MethodSpec
from training.evaluate.methods.classic import (
    NLM_ORACLE_H,
    build_bm3d,
    build_bm3d_oracle,
    build_identity,
    build_nlm,
    build_nlm_oracle,
)
from training.evaluate.methods.entries import (
    DEFAULT_STORE_ENTRY,
    build_store_default,
    build_store_denoise,
    build_store_pilot,
    checkpoint_builder,
    onnx_entry_builder,
)
from training.evaluate.methods.learned import build_dncnn, build_ffdnet, build_ffdnet_oracle

__all__ = ["METHODS", "MethodContext", "MethodSpec", "get_method", "method_names", "resolve_methods"]


METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec(
            "identity", "Degraded input", "reference", build_identity, "the degraded input, unchanged"
        ),
        MethodSpec(
            "bm3d",
            "BM3D",
            "peer",
            build_bm3d,
            "bm3d package 4.x, bm3d_rgb (opponent colour space), low-complexity profile, sigma per image by "
            "wavelet-MAD (skimage estimate_sigma)",
        ),
        MethodSpec(
            "nlm",
            "OpenCV NLM",
            "peer",
            build_nlm,
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
            build_oracle=build_nlm_oracle,
        ),
        MethodSpec("dncnn", "DnCNN-B (colour)", "peer", build_dncnn, "KAIR dncnn_color_blind.pth, blind"),
        MethodSpec(
            "ffdnet",
            "FFDNet (colour)",
            "peer",
            build_ffdnet,
            "KAIR ffdnet_color.pth, sigma map = estimated sigma",
        ),
        MethodSpec(
            "bm3d-oracle",
            "BM3D (oracle sigma)",
            "peer",
            None,
            "BM3D told the true noise level (high-pass std of degraded - clean): the peer's best case",
            build_oracle=build_bm3d_oracle,
        ),
        MethodSpec(
            "ffdnet-oracle",
            "FFDNet (oracle sigma)",
            "peer",
            None,
            "FFDNet with its noise map at the true noise level: the peer's best case",
            build_oracle=build_ffdnet_oracle,
        ),
        MethodSpec(
            "autoencoder",
            "Auto-Encoder",
            "dir",
            checkpoint_builder("autoencoder"),
            "plain encoder/decoder of equal size, same budget (run folder)",
        ),
        MethodSpec(
            "dir-r0",
            "DiR: r0 only",
            "dir",
            checkpoint_builder("r0_only"),
            "decoder on the baseline DiR r0 (run folder)",
            (True, False, False),
        ),
        MethodSpec(
            "dir-no-pilot",
            "DiR: r0 + A, no pilot",
            "dir",
            checkpoint_builder("no_pilot"),
            "alignment network guided by r0 (run folder)",
            (True, True, False),
        ),
        MethodSpec(
            "dir-full",
            "DiR: full (r0 + A + pilot)",
            "dir",
            checkpoint_builder("full"),
            "the paper's full method, PyTorch checkpoint (run folder)",
            (True, True, True),
        ),
        MethodSpec(
            "onnx",
            "DiR shipped (ONNX)",
            "shipped",
            build_store_default,
            f"highest version of model_store/{DEFAULT_STORE_ENTRY}, run by onnxruntime",
        ),
        MethodSpec(
            "onnx-denoise",
            "DiR shipped, denoise mode (ONNX)",
            "shipped",
            build_store_denoise,
            f"the denoise graph of the highest model_store/{DEFAULT_STORE_ENTRY} (what "
            "/v1/restore?mode=denoise serves: noise and JPEG removed, the camera's colour kept), onnxruntime",
        ),
        MethodSpec(
            "onnx-pilot",
            "Diagnostic: D*(DfR(x)), pilot decoded",
            "diagnostic",
            build_store_pilot,
            f"DIAGNOSTIC, neither the paper's method nor the service's default output: {PILOT_FILE} then "
            f"{DECODER_FILE} of the highest model_store/{DEFAULT_STORE_ENTRY} entry (onnxruntime), "
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
            name, f"ONNX {entry.parent.name}/{entry.name}", "shipped", onnx_entry_builder(entry), str(entry)
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
