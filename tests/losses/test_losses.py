"""Each loss term against its closed form, its sign and its behaviour at the extremes."""

from __future__ import annotations

import math

import pytest
import torch

from training.losses import (
    LOG4,
    affine_colour_fit,
    aggregate_prior_kl,
    dfrnet_loss,
    dirnet_loss,
    gaussian_kl,
    jsd_mi_lower_bound,
    shuffle_negatives,
    stage2_loss,
)


def test_gaussian_kl_matches_closed_form_scalar() -> None:
    mu_q, s_q, mu_p, s_p = 0.3, 0.5, -0.2, 1.5
    expected = math.log(s_p / s_q) + (s_q**2 + (mu_q - mu_p) ** 2) / (2 * s_p**2) - 0.5
    got = gaussian_kl(
        torch.tensor([mu_q]),
        torch.tensor([2 * math.log(s_q)]),
        torch.tensor([mu_p]),
        torch.tensor([2 * math.log(s_p)]),
    )
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_gaussian_kl_is_zero_for_equal_and_positive_otherwise() -> None:
    g = torch.Generator().manual_seed(0)
    mu, lv = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    assert float(gaussian_kl(mu, lv, mu, lv)) == pytest.approx(0.0, abs=1e-6)
    assert float(gaussian_kl(mu, lv, mu + 0.1, lv * 0.5)) > 0.0


def test_gaussian_kl_matches_torch_distributions() -> None:
    g = torch.Generator().manual_seed(1)
    mu_q, mu_p = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    lv_q, lv_p = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    q = torch.distributions.Normal(mu_q, torch.exp(0.5 * lv_q))
    p = torch.distributions.Normal(mu_p, torch.exp(0.5 * lv_p))
    ref = torch.distributions.kl_divergence(q, p).mean()
    assert float(gaussian_kl(mu_q, lv_q, mu_p, lv_p)) == pytest.approx(float(ref), rel=1e-5)


def test_aggregate_prior_kl_zero_for_standard_normal_codes() -> None:
    g = torch.Generator().manual_seed(2)
    mu = torch.randn(64, 4, 16, 16, generator=g)
    logvar = torch.full_like(mu, -20.0)
    assert float(aggregate_prior_kl(mu, logvar)) == pytest.approx(0.0, abs=2e-3)


def test_aggregate_prior_kl_closed_form_for_shifted_codes() -> None:
    # All codes at mean m with posterior variance v: aggregate N(m, v), KL = (v + m^2 - 1 - log v) / 2.
    m, v = 0.7, 0.25
    mu = torch.full((4, 2, 3, 3), m)
    logvar = torch.full_like(mu, math.log(v))
    assert float(aggregate_prior_kl(mu, logvar)) == pytest.approx(
        0.5 * (v + m * m - 1 - math.log(v)), rel=1e-5
    )


def test_jsd_bound_is_minus_log4_for_uninformative_critic() -> None:
    zeros = torch.zeros(8, 1, 4, 4)
    assert float(jsd_mi_lower_bound(zeros, zeros)) == pytest.approx(-LOG4, rel=1e-6)


def test_jsd_bound_tends_to_zero_for_perfect_critic_and_is_never_positive() -> None:
    big = torch.full((8, 1, 4, 4), 30.0)
    assert float(jsd_mi_lower_bound(big, -big)) == pytest.approx(0.0, abs=1e-6)
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        a, b = torch.randn(16, generator=g) * 5, torch.randn(16, generator=g) * 5
        assert float(jsd_mi_lower_bound(a, b)) <= 0.0


def test_jsd_bound_identical_binary_inputs_with_optimal_critic() -> None:
    # r = x uniform on {-1, +1}: the optimal critic is log(p_J / p_M) = log 2 on matched pairs and -inf
    # on mismatched ones; the bound is then -log(3/2) - log(3)/2 (the JSD form of I(r; x) = log 2).
    r = torch.tensor([1.0, -1.0] * 64)
    x_neg = shuffle_negatives(r)

    def critic(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.where(a == b, torch.tensor(math.log(2.0)), torch.tensor(-60.0))

    got = float(jsd_mi_lower_bound(critic(r, r), critic(r, x_neg)))
    # shuffle_negatives on an alternating sequence mismatches every pair; average over both halves of M.
    expected_half = -math.log(1.5) - math.log(3.0) / 2
    assert got <= 0.0
    assert got > -LOG4
    full_marginal = torch.cat([critic(r, r), critic(r, x_neg)])
    balanced = float(
        -torch.nn.functional.softplus(-critic(r, r)).mean()
        - torch.nn.functional.softplus(full_marginal).mean()
    )
    assert balanced == pytest.approx(expected_half, rel=1e-5)


def test_jsd_bound_at_most_minus_log4_for_independent_inputs() -> None:
    # Independent inputs: joint and marginal pairs have the same law, so any critic gives <= -log 4.
    g = torch.Generator().manual_seed(4)
    for _ in range(5):
        scores = torch.randn(512, generator=g) * 3
        assert float(jsd_mi_lower_bound(scores, scores)) <= -LOG4 + 1e-6


def test_shuffle_negatives_is_a_derangement() -> None:
    x = torch.arange(5).float().view(5, 1)
    y = shuffle_negatives(x)
    assert sorted(y.flatten().tolist()) == x.flatten().tolist()
    assert all(a != b for a, b in zip(x.flatten().tolist(), y.flatten().tolist(), strict=True))


def _moments(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g) * 0.1


def test_dirnet_loss_signs_and_terms() -> None:
    m1, m2, mj = _moments(0), _moments(1), _moments(2)
    mi1, mi2 = torch.tensor(-0.5), torch.tensor(-0.3)
    out = dirnet_loss(mi1, mi2, m1, m2, mj, lam=2.0, beta=0.5)
    expected_akl = 0.5 * (gaussian_kl(*mj, *m1) + gaussian_kl(*mj, *m2))
    assert float(out["d_akl"]) == pytest.approx(float(expected_akl), rel=1e-6)
    prior = aggregate_prior_kl(torch.cat([m1[0], m2[0]]), torch.cat([m1[1], m2[1]]))
    expected = 0.4 + 2.0 * float(expected_akl) + 0.5 * float(prior)
    assert float(out["loss"]) == pytest.approx(expected, rel=1e-5)
    # More mutual information -> lower loss (the MI term enters with a minus sign).
    better = dirnet_loss(mi1 + 0.2, mi2 + 0.2, m1, m2, mj, lam=2.0, beta=0.5)
    assert float(better["loss"]) == pytest.approx(float(out["loss"]) - 0.2, rel=1e-5)


def test_dfrnet_loss_is_infovae_objective() -> None:
    moments = _moments(5)
    target = torch.rand(2, 3, 8, 8)
    recon = target + 0.1
    out = dfrnet_loss(torch.tensor(-1.0), recon, target, moments, beta_star=1.0)
    assert float(out["l1"]) == pytest.approx(0.1, rel=1e-4)
    assert float(out["loss"]) == pytest.approx(1.0 + 0.1 + float(aggregate_prior_kl(*moments)), rel=1e-5)


def test_stage2_loss_restoration_and_task_term() -> None:
    r_plus, r_star = torch.zeros(2, 4, 3, 3), torch.full((2, 4, 3, 3), 0.5)
    decoded, target = torch.zeros(2, 3, 12, 12), torch.full((2, 3, 12, 12), 0.25)
    out = stage2_loss(r_plus, r_star, decoded, target)
    assert float(out["loss"]) == pytest.approx(0.75)
    assert float(out["task"]) == 0.0
    calls: list[torch.Tensor] = []

    def task(img: torch.Tensor) -> torch.Tensor:
        calls.append(img)
        return torch.tensor(2.0)

    det = stage2_loss(r_plus, r_star, decoded, target, gamma1=2.0, gamma2=1.0, task_loss=task)
    assert float(det["loss"]) == pytest.approx(0.5 + 2.0 * 2.0 + 0.25)
    assert calls and calls[0] is decoded


def test_affine_colour_fit_undoes_an_affine_colour_change_and_passes_gradients() -> None:
    target = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    matrix = torch.tensor([[0.8, 0.1, 0.0], [0.05, 1.2, -0.1], [0.0, 0.2, 0.7]])
    recoloured = (torch.einsum("ij,njhw->nihw", matrix, target) + 0.05).requires_grad_()
    fitted = affine_colour_fit(recoloured, target)
    torch.testing.assert_close(fitted, target, atol=1e-3, rtol=0)
    noisy = target + 0.1 * torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    # The fit never does worse than the identity map (least squares, up to the ridge).
    assert float((affine_colour_fit(noisy, target) - target).pow(2).mean()) <= float(
        (noisy - target).pow(2).mean()
    )
    fitted.sum().backward()
    assert recoloured.grad is not None and torch.isfinite(recoloured.grad).all()
    flat = affine_colour_fit(torch.full((1, 3, 8, 8), 0.5), target[:1, :, :8, :8])
    assert torch.isfinite(flat).all()


def test_stage2_loss_colour_fitted_term() -> None:
    r_plus, r_star = torch.zeros(2, 4, 3, 3), torch.zeros(2, 4, 3, 3)
    target = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    decoded = 0.5 * target + 0.2  # pure colour error: the fitted term sees none of it
    off = stage2_loss(r_plus, r_star, decoded, target)
    on = stage2_loss(r_plus, r_star, decoded, target, gamma_fit=3.0)
    assert float(off["fit_l1"]) == 0.0 and float(off["loss"]) == pytest.approx(float(off["image_l1"]))
    assert float(on["fit_l1"]) < 1e-3
    assert float(on["loss"]) == pytest.approx(float(on["image_l1"]) + 3.0 * float(on["fit_l1"]))
