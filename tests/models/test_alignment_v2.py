"""A v2 (``align_arch: v2``): residual stages, one context level, the global path; starts as r+ = pilot,
runs at any latent size, keeps two-pass tiling exact and exports with parity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from training.errors import ConfigError
from training.export import export_system
from training.models import DiRSystem, ModelConfig
from training.models.alignment import AlignmentNetV2
from training.train.config import config_from_dict

V2 = ModelConfig(latent_channels=4, widths=(8, 8, 12), align_width=8, disc_width=8, align_arch="v2")


def _trained_looking(system: DiRSystem) -> DiRSystem:
    """Non-zero output convolution, FiLM and kernel heads, so A v2 changes r+ and depends on the pool."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in system.alignment.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return system.eval()


def test_v2_starts_as_the_pilot_at_any_latent_size() -> None:
    system = DiRSystem(V2).eval()
    assert isinstance(system.alignment, AlignmentNetV2)
    x = torch.rand(2, 3, 20, 28)  # latent 5 x 7: odd sides go through the context level
    with torch.no_grad():
        out = system(x)
    assert out["r_plus"].shape == (2, 4, 5, 7)
    assert torch.equal(out["r_plus"], out["pilot"])


def test_v2_tiles_with_the_whole_image_pool() -> None:
    system = _trained_looking(DiRSystem(V2))
    x = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        whole = system(x)["r_plus"]
        assert not torch.equal(whole, system(x)["pilot"])
        mean = system.guide_features(x).mean(dim=(2, 3))
        assert torch.allclose(system(x, mean)["r_plus"], whole, atol=1e-6)
        tile = x[..., :, :24]
        assert not torch.allclose(system(tile)["r_plus"], system(tile, mean)["r_plus"], atol=1e-4)


def test_v2_exports_with_parity(tmp_path: Path) -> None:
    system = _trained_looking(DiRSystem(V2))
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(2, 3, 32, 32, generator=g), torch.rand(1, 3, 24, 40, generator=g)]
    entry = tmp_path / "dir-restore" / "9.9.9"
    export_system(system, entry, "9.9.9", images, training={"run": "unit"}, metrics={})
    x = torch.rand(1, 3, 28, 36, generator=g)
    providers = ["CPUExecutionProvider"]
    (features,) = ort.InferenceSession(str(entry / "guide.onnx"), providers=providers).run(
        None, {"image": x.numpy()}
    )
    mean = np.asarray(features.mean(axis=(2, 3)), dtype=np.float32)
    served = ort.InferenceSession(str(entry / "model.onnx"), providers=providers)
    restored = served.run(["restored"], {"image": x.numpy(), "guide_mean": mean})[0]
    with torch.no_grad():
        ref = system(x)["restored"].numpy()
    assert np.abs(restored - ref).max() < 1e-4


def test_bad_architecture_names_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"model\.align_arch must be one of"):
        config_from_dict({"model": {"align_arch": "v3"}})
    with pytest.raises(ConfigError, match="align_m1 and align_m3 >= 2"):
        config_from_dict({"model": {"align_arch": "v2", "align_m1": 1}})
    with pytest.raises(ConfigError, match=r"model\.denoise_decode must be one of"):
        config_from_dict({"model": {"denoise_decode": "residual"}})
