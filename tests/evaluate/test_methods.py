"""Every registered method restores a synthetic noisy image to a higher PSNR than its input; the ONNX
methods' plumbing (padding, version choice, sha256, component graphs) on tiny generated graphs."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from modelstore.manifest import (
    Manifest,
    ModelFile,
    TensorSpec,
    read_manifest,
    sha256_file,
    write_manifest,
)
from training.data import load_rgb_batch
from training.evaluate.errors import MethodUnavailableError, UnknownNameError
from training.evaluate.methods import MethodContext, get_method, method_names, resolve_methods
from training.evaluate.methods.entries import OnnxRestorer, PilotDecodeRestorer, latest_store_entry
from training.evaluate.metrics import psnr
from training.paths import REPO_ROOT

NOISE_SIGMA = 0.08


@pytest.fixture(scope="module")
def noisy_pair(dataset: Callable[[str], Path]) -> tuple[torch.Tensor, torch.Tensor]:
    """A 96x96 crop of Set14 'lenna' (clean) and the same crop with Gaussian noise sigma 0.08 (seed 0)."""
    clean = load_rgb_batch(dataset("cset14") / "lenna.png")[..., 200:296, 200:296].contiguous()
    g = torch.Generator().manual_seed(0)
    noisy = (clean + NOISE_SIGMA * torch.randn(clean.shape, generator=g)).clamp(0, 1)
    return clean, noisy


@pytest.fixture(scope="module")
def isp_pair(dataset: Callable[[str], Path]) -> tuple[torch.Tensor, torch.Tensor]:
    """A 128x128 crop of Set14 'lenna' (clean) and the same crop through the ISP preset 'lowlight' (a camera
    pipeline with heavy noise, inside the DiR models' training distribution; Gaussian noise on clean sRGB is
    outside it). On the milder 'ablation' preset the default model does not beat its input on Set14: see
    docs/RESULTS.md."""
    from training.isp import simulate, stable_seed

    clean = load_rgb_batch(dataset("cset14") / "lenna.png")[..., 160:288, 160:288].contiguous()
    degraded = simulate(
        clean, preset="lowlight", seed=stable_seed("lowlight", "cset14", "lenna.png")
    ).degraded
    return clean, degraded.float().contiguous()


def _context() -> MethodContext:
    """Checkpoint methods use ``$DIR_EVAL_RUN`` or ``runs/default`` when one exists (else they skip)."""
    run = Path(os.environ.get("DIR_EVAL_RUN", REPO_ROOT / "runs" / "default"))
    return MethodContext(run_dir=run if run.exists() else None)


@pytest.mark.parametrize("name", [n for n in method_names() if n != "identity"])
def test_method_raises_psnr_of_a_noisy_crop(name: str, request: pytest.FixtureRequest) -> None:
    """Peers on a Gaussian-noise crop; DiR checkpoints, shipped models and diagnostics on a low-light ISP
    crop."""
    family = get_method(name).family
    clean, noisy = request.getfixturevalue("noisy_pair" if family == "peer" else "isp_pair")
    try:
        restore = get_method(name).bind(_context())
    except MethodUnavailableError as exc:
        pytest.skip(f"{name} has no model here: {exc}")
    out = restore(noisy, clean)
    assert out.shape == noisy.shape
    assert out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert psnr(out, clean)[0] > psnr(noisy, clean)[0]


def test_identity_returns_its_input(noisy_pair: tuple[torch.Tensor, torch.Tensor]) -> None:
    _, noisy = noisy_pair
    assert torch.equal(get_method("identity").bind(MethodContext())(noisy, None), noisy)


def test_unknown_method_lists_valid_names() -> None:
    with pytest.raises(UnknownNameError, match="valid methods: identity, bm3d"):
        resolve_methods("identity,nope")
    assert [m.name for m in resolve_methods("all")] == [n for n in method_names() if n != "onnx-pilot"]


def test_diagnostic_runs_only_when_named() -> None:
    assert get_method("onnx-pilot").family == "diagnostic"
    assert "onnx-pilot" not in [m.name for m in resolve_methods("all")]
    assert [m.name for m in resolve_methods("identity,onnx-pilot")] == ["identity", "onnx-pilot"]


def test_oracle_peer_refuses_images_without_reference(noisy_pair: tuple[torch.Tensor, torch.Tensor]) -> None:
    _, noisy = noisy_pair
    with pytest.raises(MethodUnavailableError, match="clean reference"):
        get_method("ffdnet-oracle").bind(MethodContext())(noisy, None)


def test_checkpoint_method_without_run_says_what_is_missing() -> None:
    with pytest.raises(MethodUnavailableError, match="--run"):
        get_method("dir-full").bind(MethodContext(run_dir=None))


def _blur_entry(entry: Path, multiple: int) -> Path:
    """A model_store entry whose ONNX graph is a 3x3 average pool (a crude denoiser) on ``image``."""
    node = helper.make_node(
        "AveragePool", ["image"], ["restored"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=0
    )
    spec_in = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])
    spec_out = helper.make_tensor_value_info("restored", TensorProto.FLOAT, ["N", 3, "H", "W"])
    model = helper.make_model(
        helper.make_graph([node], "blur", [spec_in], [spec_out]), opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 8
    entry.mkdir(parents=True)
    onnx.save(model, entry / "model.onnx")
    write_manifest(
        entry,
        Manifest(
            name="dir-restore",
            version=entry.name,
            opset=17,
            inputs=[TensorSpec(name="image", shape=["N", 3, "H", "W"])],
            outputs=[TensorSpec(name="restored", shape=["N", 3, "H", "W"])],
            size_multiple=multiple,
            files=[ModelFile(path="model.onnx", sha256=sha256_file(entry / "model.onnx"))],
        ),
    )
    return entry


def test_onnx_entry_pads_to_size_multiple_and_picks_the_highest_version(
    tmp_path: Path, noisy_pair: tuple[torch.Tensor, torch.Tensor]
) -> None:
    _blur_entry(tmp_path / "dir-restore" / "2", multiple=8)
    _blur_entry(tmp_path / "dir-restore" / "10", multiple=8)
    entry = latest_store_entry(tmp_path)
    assert entry.name == "10"
    clean, noisy = noisy_pair
    crop_clean, crop_noisy = clean[..., :93, :90], noisy[..., :93, :90]  # not multiples of 8
    bound = get_method("onnx").bind(MethodContext(model_store=tmp_path))
    assert bound.version == "dir-restore/10"
    out = bound(crop_noisy, None)
    assert out.shape == crop_noisy.shape
    assert psnr(out, crop_clean)[0] > psnr(crop_noisy, crop_clean)[0]
    assert get_method(f"onnx:{entry}").bind(MethodContext()).version == "dir-restore/10"


def test_onnx_entry_with_a_wrong_sha256_is_refused(tmp_path: Path) -> None:
    entry = _blur_entry(tmp_path / "dir-restore" / "1", multiple=1)
    (entry / "model.onnx").write_bytes((entry / "model.onnx").read_bytes() + b"\0")
    with pytest.raises(MethodUnavailableError, match="sha256"):
        OnnxRestorer(entry)


def test_missing_model_store_entry_names_the_folder(tmp_path: Path) -> None:
    with pytest.raises(MethodUnavailableError, match=str(tmp_path / "dir-restore")):
        latest_store_entry(tmp_path)


def test_ffdnet_keeps_odd_sizes(noisy_pair: tuple[torch.Tensor, torch.Tensor]) -> None:
    _, noisy = noisy_pair
    odd = noisy[..., :31, :45]
    out = get_method("ffdnet").bind(MethodContext())(odd, None)
    assert out.shape == odd.shape
    assert np.isfinite(out.numpy()).all()


def test_onnx_two_pass_entry_uses_the_whole_image_guide_mean(tmp_path: Path) -> None:
    """A two-pass entry scores the whole image: guide_mean = spatial mean of the guide graph's output, so the
    result is the PyTorch model pooling over the whole (padded) image."""
    from tests.service.fixture_model import TinyDiR, build_entry

    entry = build_entry(tmp_path, version="3")
    bound = get_method(f"onnx:{entry}").bind(MethodContext())
    x = torch.rand(1, 3, 62, 70, generator=torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (0, 2, 0, 2), mode="reflect")
    with torch.no_grad():
        expected = TinyDiR().eval()(padded)[0][..., :62, :70]
    torch.testing.assert_close(bound(x, None), expected, atol=1e-5, rtol=0)


def _graph(
    name: str, nodes: list[onnx.NodeProto], inp: str, out: str, channels: tuple[int, int]
) -> onnx.ModelProto:
    spec_in = helper.make_tensor_value_info(inp, TensorProto.FLOAT, ["N", channels[0], "H", "W"])
    spec_out = helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", channels[1], "h", "w"])
    model = helper.make_model(
        helper.make_graph(nodes, name, [spec_in], [spec_out]), opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 8
    return model


def _pilot_entry(entry: Path, gain: float = 1.0) -> Path:
    """A two-component entry (size_multiple 4) beside :func:`_blur_entry`'s serving graph: ``dfrnet.onnx``
    = 3x3 average pool then space-to-depth by 4 (image -> pilot (N, 48, H/4, W/4)); ``decoder.onnx`` =
    depth-to-space by 4 times ``gain`` (r_plus -> restored). So D*(DfR(x)) = ``gain`` x the 3x3 blur of x."""
    _blur_entry(entry, multiple=4)
    dfrnet = _graph(
        "dfrnet",
        [
            helper.make_node(
                "AveragePool",
                ["image"],
                ["blur"],
                kernel_shape=[3, 3],
                pads=[1, 1, 1, 1],
                count_include_pad=0,
            ),
            helper.make_node("SpaceToDepth", ["blur"], ["pilot"], blocksize=4),
        ],
        "image",
        "pilot",
        (3, 48),
    )
    decoder = _graph(
        "decoder",
        [
            helper.make_node("DepthToSpace", ["r_plus"], ["image"], blocksize=4, mode="DCR"),
            helper.make_node(
                "Constant", [], ["gain"], value=helper.make_tensor("gain", TensorProto.FLOAT, [], [gain])
            ),
            helper.make_node("Mul", ["image", "gain"], ["restored"]),
        ],
        "r_plus",
        "restored",
        (48, 3),
    )
    manifest = read_manifest(entry)
    for name, model in (("dfrnet.onnx", dfrnet), ("decoder.onnx", decoder)):
        onnx.save(model, entry / name)
        manifest.files.append(ModelFile(path=name, sha256=sha256_file(entry / name), role="component"))
    write_manifest(entry, manifest)
    return entry


def _blur(x: torch.Tensor) -> torch.Tensor:
    """The 3x3 average pool of :func:`_pilot_entry`'s DfRNet on the input reflect-padded to multiples of 4."""
    h, w = x.shape[-2:]
    padded = torch.nn.functional.pad(x, (0, (-w) % 4, 0, (-h) % 4), mode="reflect")
    return torch.nn.functional.avg_pool2d(padded, 3, 1, 1, count_include_pad=False)[..., :h, :w]


def test_onnx_pilot_decodes_the_pilot_of_the_highest_entry(
    tmp_path: Path, noisy_pair: tuple[torch.Tensor, torch.Tensor]
) -> None:
    _pilot_entry(tmp_path / "dir-restore" / "2")
    _pilot_entry(tmp_path / "dir-restore" / "10")
    clean, noisy = noisy_pair
    crop_clean, crop_noisy = clean[..., :93, :90], noisy[..., :93, :90]  # not multiples of 4
    bound = get_method("onnx-pilot").bind(MethodContext(model_store=tmp_path))
    assert bound.version == "dir-restore/10"
    assert bound.fingerprint is not None
    out = bound(crop_noisy, None)
    assert out.shape == crop_noisy.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, _blur(crop_noisy), atol=1e-6, rtol=0)
    assert psnr(out, crop_clean)[0] > psnr(crop_noisy, crop_clean)[0]


def test_onnx_pilot_clips_to_the_unit_range(tmp_path: Path) -> None:
    entry = _pilot_entry(tmp_path / "dir-restore" / "1", gain=1.5)
    x = torch.rand(2, 3, 30, 41, generator=torch.Generator().manual_seed(0))
    out = PilotDecodeRestorer(entry)(x)
    assert out.shape == x.shape
    assert float(out.min()) >= 0.0 and float(out.max()) == 1.0
    torch.testing.assert_close(out, (1.5 * _blur(x)).clamp(0, 1), atol=1e-6, rtol=0)


def test_onnx_pilot_without_component_graphs_names_them(tmp_path: Path) -> None:
    _blur_entry(tmp_path / "dir-restore" / "1", multiple=4)
    with pytest.raises(
        MethodUnavailableError, match=r"lacks the component graph\(s\) dfrnet.onnx, decoder.onnx"
    ):
        get_method("onnx-pilot").bind(MethodContext(model_store=tmp_path))


def test_onnx_pilot_refuses_a_component_with_a_wrong_sha256(tmp_path: Path) -> None:
    entry = _pilot_entry(tmp_path / "dir-restore" / "1")
    (entry / "decoder.onnx").write_bytes((entry / "decoder.onnx").read_bytes() + b"\0")
    with pytest.raises(MethodUnavailableError, match=r"sha256 of .*decoder\.onnx"):
        PilotDecodeRestorer(entry)
