"""Shapes, registry, variants, the G-Conv and load_system of the DiR networks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training.errors import CheckpointError
from training.models import (
    MODEL_REGISTRY,
    VARIANTS,
    DiRSystem,
    ModelConfig,
    build_model,
    dynamic_depthwise_conv,
    load_system,
    system_state,
)

SMALL = ModelConfig(latent_channels=4, widths=(8, 8, 12), align_width=8, disc_width=8)


@pytest.mark.parametrize("name", sorted(MODEL_REGISTRY))
def test_every_registered_network_builds_and_runs(name: str) -> None:
    net = build_model(name, SMALL)
    x = torch.rand(2, 3, 16, 24)
    r = torch.randn(2, 4, 4, 6)
    if name in ("dirnet", "dfrnet", "denoiser"):
        mu, logvar = net(x)
        assert mu.shape == logvar.shape == (2, 4, 4, 6)
    elif name == "joint_encoder":
        mu, _ = net(torch.cat([x, x], dim=1))
        assert mu.shape == (2, 4, 4, 6)
    elif name == "ae_encoder":
        assert net(x).shape == (2, 4, 4, 6)
    elif name == "decoder":
        assert net(r).shape == (2, 3, 16, 24)
    elif name == "discriminator":
        assert net(r, x).shape == (2, 1, 4, 6)
    elif name == "detail_gate":
        gate = net(x, x)
        assert gate.shape == (2, 1, 16, 24) and torch.allclose(gate, torch.sigmoid(torch.tensor(-2.0)))
    else:
        assert net(r, r).shape == r.shape


def test_unknown_network_name_is_a_clear_error() -> None:
    with pytest.raises(CheckpointError, match="unknown model"):
        build_model("nope", SMALL)


def test_dynamic_depthwise_conv_matches_grouped_conv_per_sample() -> None:
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(3, 5, 7, 9, generator=g)
    kernels = torch.randn(3, 5, 3, 3, generator=g)
    got = dynamic_depthwise_conv(feats, kernels)
    for i in range(3):
        ref = torch.nn.functional.conv2d(feats[i : i + 1], kernels[i].unsqueeze(1), padding=1, groups=5)
        torch.testing.assert_close(got[i : i + 1], ref, rtol=1e-5, atol=1e-5)


def test_guided_layer_starts_as_identity_gconv() -> None:
    align = build_model("alignment", SMALL)
    layer = align.a2[0]  # type: ignore[index]
    feats, guide = torch.randn(2, 8, 5, 5), torch.randn(2, 4, 5, 5)
    g = layer.guide(guide)
    kernels = layer.fc(g.mean(dim=(2, 3))).reshape(-1, 8, 3, 3)
    torch.testing.assert_close(dynamic_depthwise_conv(feats, kernels), feats)


def test_pilot_changes_the_full_variant_output() -> None:
    torch.manual_seed(0)
    system = DiRSystem(SMALL, "full").eval()
    for p in system.alignment.parameters():  # make the guide branch matter
        torch.nn.init.normal_(p, std=0.3)
    x = torch.rand(1, 3, 16, 16)
    r0 = system.dirnet(x)[0]
    a = system.alignment(r0, system.dfrnet(x)[0])
    b = system.alignment(r0, torch.zeros_like(r0))
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("variant", VARIANTS)
def test_variants_forward_and_restore_any_size(variant: str) -> None:
    system = DiRSystem(SMALL, variant).eval()  # type: ignore[arg-type]
    with torch.no_grad():
        out = system(torch.rand(2, 3, 16, 20))
    assert out["restored"].shape == (2, 3, 16, 20)
    assert out["r_plus"].shape == out["r0"].shape == (2, 4, 4, 5)
    assert ("pilot" in out) == (variant in ("full", "no_pilot"))
    assert float(out["restored"].min()) >= 0.0 and float(out["restored"].max()) <= 1.0
    restored = system.restore(torch.rand(1, 3, 17, 23))
    assert restored.shape == (1, 3, 17, 23)


def test_autoencoder_has_encoder_and_decoder_of_the_dir_sizes() -> None:
    ae = DiRSystem(SMALL, "autoencoder")
    full = DiRSystem(SMALL, "full")
    n = sum(p.numel() for p in ae.parameters())
    assert n == sum(p.numel() for p in full.dirnet.parameters()) + sum(
        p.numel() for p in full.decoder.parameters()
    )


def test_load_system_round_trip_and_errors(tmp_path: Path) -> None:
    system = DiRSystem(SMALL, "no_pilot").eval()
    ckpt = tmp_path / "ablation-no_pilot.pt"
    torch.save({"stage": "ablation", **system_state(system)}, ckpt)
    loaded = load_system(ckpt)
    assert loaded.variant == "no_pilot"
    x = torch.rand(1, 3, 12, 12)
    torch.testing.assert_close(loaded.restore(x), system.restore(x))
    assert load_system(tmp_path, "no_pilot").variant == "no_pilot"
    with pytest.raises(CheckpointError, match="not the requested"):
        load_system(ckpt, "full")
    with pytest.raises(CheckpointError, match=r"no stage2\.pt"):
        load_system(tmp_path)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_system(tmp_path / "missing")


@pytest.mark.parametrize("variant", ["full", "no_pilot"])
def test_guide_mean_of_the_input_itself_changes_nothing(variant: str) -> None:
    """forward(x, mean of guide_features(x)) is forward(x); another mean changes the output."""
    torch.manual_seed(0)
    system = DiRSystem(SMALL, variant).eval()  # type: ignore[arg-type]
    for p in system.alignment.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.rand(2, 3, 16, 24)
    with torch.no_grad():
        features = system.guide_features(x)
        assert features.shape == (2, SMALL.align_m2 * SMALL.align_width, 4, 6)
        own = system(x, features.mean(dim=(2, 3)))
        plain = system(x)
        other = system(x, torch.zeros(2, features.shape[1]))
    for name in plain:
        torch.testing.assert_close(own[name], plain[name])
    assert not torch.allclose(other["r_plus"], plain["r_plus"])


def test_guide_features_need_an_alignment_network() -> None:
    with pytest.raises(CheckpointError, match="no alignment network"):
        DiRSystem(SMALL, "r0_only").guide_features(torch.rand(1, 3, 16, 16))
