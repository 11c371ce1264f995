"""export_system on a small untrained system: files, manifest, sha256, parity, dynamic axes, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from modelstore.manifest import TileSpec, read_manifest, sha256_file
from training.errors import ExportError
from training.export import SERVING_OUTPUTS, export_system
from training.models import DiRSystem, ModelConfig

SMALL = ModelConfig(latent_channels=4, widths=(8, 8, 12), align_width=8, disc_width=8)


def pool_sensitive(system: DiRSystem) -> DiRSystem:
    """Random G-Conv FC weights, stronger guide convolutions and a non-zero last A3 conv, so the output
    depends on the global pool (an untrained system has delta kernels and r+ = pilot)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in system.alignment.a2:  # type: ignore[union-attr]
            layer.fc.weight.copy_(torch.randn(layer.fc.weight.shape, generator=g) * 2.0)
            for conv in layer.guide[::2]:
                conv.weight.mul_(3.0)
        last = system.alignment.a3[-1]  # type: ignore[index]
        last.weight.copy_(torch.randn(last.weight.shape, generator=g) * 0.3)
    return system


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[DiRSystem, Path]:
    torch.manual_seed(0)
    system = pool_sensitive(DiRSystem(SMALL, "full").eval())
    entry = tmp_path_factory.mktemp("store") / "dir-restore" / "9.9.9"
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(2, 3, 32, 32, generator=g), torch.rand(1, 3, 24, 40, generator=g)]
    export_system(system, entry, "9.9.9", images, training={"run": "unit"}, metrics={"note": "untrained"})
    return system, entry


def test_manifest_lists_every_file_with_its_sha256(exported: tuple[DiRSystem, Path]) -> None:
    _, entry = exported
    m = read_manifest(entry)
    assert m.name == "dir-restore" and m.version == "9.9.9" and m.opset >= 17
    assert [t.name for t in m.inputs] == ["image", "guide_mean"] and m.inputs[0].value_range == (0.0, 1.0)
    assert m.inputs[1].shape == ["N", 2 * 8] and m.schema_version == 2
    assert m.guide is not None and m.guide.onnx_file == "guide.onnx" and m.guide.mean_input == "guide_mean"
    assert m.guide.outputs[0].shape == ["N", 16, "H/4", "W/4"]
    assert {f.path: f.role for f in m.files}["guide.onnx"] == "serve-guide"
    assert tuple(t.name for t in m.outputs) == SERVING_OUTPUTS
    assert m.outputs[1].shape == ["N", 4, "H/4", "W/4"]
    assert m.tile is not None and m.tile.size % m.size_multiple == 0
    for f in m.files:
        assert sha256_file(entry / f.path) == f.sha256
        onnx.checker.check_model(onnx.load(str(entry / f.path)))
    assert m.training == {"run": "unit"} and m.metrics == {"note": "untrained"}


def session(entry: Path, name: str) -> ort.InferenceSession:
    return ort.InferenceSession(str(entry / name), providers=["CPUExecutionProvider"])


def whole_image_mean(entry: Path, x: np.ndarray) -> np.ndarray:
    """guide_mean of whole images ``x``: the spatial mean of guide.onnx's output, (N, m2*F)."""
    (features,) = session(entry, "guide.onnx").run(["guide_features"], {"image": x})
    return np.asarray(features.mean(axis=(2, 3)), dtype=np.float32)


def test_guide_graph_matches_pytorch_with_dynamic_axes(exported: tuple[DiRSystem, Path]) -> None:
    system, entry = exported
    x = torch.rand(3, 3, 20, 28)
    (features,) = session(entry, "guide.onnx").run(["guide_features"], {"image": x.numpy()})
    with torch.no_grad():
        ref = system.guide_features(x).numpy()
    assert features.shape == ref.shape == (3, 16, 5, 7)
    assert float(np.abs(features - ref).max()) < 1e-4


def test_serving_graph_has_dynamic_batch_and_spatial_axes(exported: tuple[DiRSystem, Path]) -> None:
    """model.onnx(image, mean_hw(guide.onnx(image))) is PyTorch's whole-image forward(image)."""
    system, entry = exported
    x = torch.rand(3, 3, 20, 28)
    got = session(entry, "model.onnx").run(
        list(SERVING_OUTPUTS), {"image": x.numpy(), "guide_mean": whole_image_mean(entry, x.numpy())}
    )
    with torch.no_grad():
        ref = system(x)
    for name, arr in zip(SERVING_OUTPUTS, got, strict=True):
        assert arr.shape == tuple(ref[name].shape)
        assert float(np.abs(arr - ref[name].numpy()).max()) < 1e-4


def test_guide_mean_of_the_whole_image_makes_a_tile_exact(exported: tuple[DiRSystem, Path]) -> None:
    """Away from its border, a tile run with its image's guide_mean matches the whole image; with the tile's
    own mean (single-pass tiling) it does not."""
    _, entry = exported
    x = torch.rand(1, 3, 256, 256).numpy()
    x[:, :, :128, :128] *= 0.2  # a dark tile in a bright image: its own pool differs from the image's
    tile = np.ascontiguousarray(x[:, :, :128, :128])
    serve = session(entry, "model.onnx")
    (whole,) = serve.run(["r_plus"], {"image": x, "guide_mean": whole_image_mean(entry, x)})
    (exact,) = serve.run(["r_plus"], {"image": tile, "guide_mean": whole_image_mean(entry, x)})
    (own,) = serve.run(["r_plus"], {"image": tile, "guide_mean": whole_image_mean(entry, tile)})
    inner = whole[:, :, :8, :8]
    assert float(np.abs(exact[:, :, :8, :8] - inner).max()) < 1e-4
    assert float(np.abs(own[:, :, :8, :8] - inner).max()) > 5e-3


def test_components_compose_to_the_fused_graph(exported: tuple[DiRSystem, Path]) -> None:
    _, entry = exported

    def run(name: str, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return ort.InferenceSession(str(entry / name), providers=["CPUExecutionProvider"]).run(None, feed)

    x = torch.rand(1, 3, 16, 16).numpy()
    (r0,) = run("dirnet.onnx", {"image": x})
    (pilot,) = run("dfrnet.onnx", {"image": x})
    (r_plus,) = run("alignment.onnx", {"r0": r0, "pilot": pilot})
    (restored,) = run("decoder.onnx", {"r_plus": r_plus})
    fused = run("model.onnx", {"image": x, "guide_mean": whole_image_mean(entry, x)})
    assert float(np.abs(fused[0] - restored).max()) < 1e-5
    assert float(np.abs(fused[1] - r_plus).max()) < 1e-5


def test_denoise_graph_is_the_pilot_decoded(exported: tuple[DiRSystem, Path]) -> None:
    """denoise.onnx = clamp(D*(mean of DfRNet(image))) with dynamic axes, recorded in extra.denoise."""
    system, entry = exported
    m = read_manifest(entry)
    assert m.extra["denoise"]["onnx_file"] == "denoise.onnx"
    assert {f.path: f.role for f in m.files}["denoise.onnx"] == "serve-denoise"
    assert m.extra["parity_max_abs_fp32"]["denoise.onnx"] < 1e-4
    x = torch.rand(2, 3, 28, 36, generator=torch.Generator().manual_seed(5))
    (got,) = session(entry, "denoise.onnx").run(["restored"], {"image": x.numpy()})
    with torch.no_grad():
        want = system.decoder(system.dfrnet(x)[0]).clamp(0.0, 1.0)  # type: ignore[operator]
    assert np.abs(got - want.numpy()).max() < 1e-4


def test_export_refuses_ablations_and_bad_parity_images(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="only the full method"):
        export_system(DiRSystem(SMALL, "autoencoder"), tmp_path / "a", "1", [torch.rand(1, 3, 16, 16)])
    with pytest.raises(ExportError, match="multiples of 4"):
        export_system(DiRSystem(SMALL, "full"), tmp_path / "b", "1", [torch.rand(1, 3, 18, 16)])


def test_fp16_variant_has_fp32_io_and_stated_parity(exported: tuple[DiRSystem, Path]) -> None:
    system, entry = exported
    m = read_manifest(entry)
    fp16 = m.extra["fp16"]
    assert fp16["onnx_file"] == "model.fp16.onnx"
    assert fp16["parity_max_abs"]["restored"] <= fp16["tolerance_restored"] == pytest.approx(2 / 255)
    assert [f.role for f in m.files if f.path == "model.fp16.onnx"] == ["serve-fp16"]
    half = session(entry, "model.fp16.onnx")
    inputs = [(i.name, i.type) for i in half.get_inputs()]
    assert inputs == [("image", "tensor(float)"), ("guide_mean", "tensor(float)")]
    x = torch.rand(2, 3, 20, 28)
    feed = {"image": x.numpy(), "guide_mean": whole_image_mean(entry, x.numpy())}
    restored = half.run(["restored"], feed)[0]
    with torch.no_grad():
        ref = system(x)["restored"].numpy()
    assert restored.dtype == np.float32 and restored.shape == ref.shape
    assert float(np.abs(restored - ref).max()) < 2 / 255


def test_manifest_tile_default_and_bad_tiles(exported: tuple[DiRSystem, Path], tmp_path: Path) -> None:
    system, _ = exported
    assert read_manifest(exported[1]).tile == TileSpec(size=256, overlap=32)
    images = [torch.rand(1, 3, 16, 16)]
    with pytest.raises(ExportError, match="tile size 250 and overlap 32 must be multiples of 4"):
        export_system(system, tmp_path / "bad", "0.0.0", images, tile=TileSpec(size=250, overlap=32))


def test_cli_refuses_a_bad_tile_before_loading(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from training.export.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path), "--to", str(tmp_path / "e"), "--tile-size", "0"])
    assert exit_info.value.code == 2 and "bad tile" in capsys.readouterr().err
