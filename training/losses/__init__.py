"""The paper's objectives as functions of tensors (no networks inside), so each term is testable.

Latent moments are (N, C, h, w) tensors (mean and log-variance of diagonal Gaussians); images are
(N, 3, H, W) sRGB in [0, 1]. Every function returns a scalar (0-dim) tensor or a dict of them; the key
``"loss"`` is the one to minimise.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.nn import functional

from training.colour import affine_colour_fit

LOG4 = float(torch.log(torch.tensor(4.0)))


def gaussian_kl(mu_q: Tensor, logvar_q: Tensor, mu_p: Tensor, logvar_p: Tensor) -> Tensor:
    """KL(N(mu_q, e^logvar_q) || N(mu_p, e^logvar_p)) per element, averaged over all elements (nats)."""
    var_ratio = torch.exp(logvar_q - logvar_p)
    mean_term = (mu_q - mu_p).pow(2) * torch.exp(-logvar_p)
    return 0.5 * (var_ratio + mean_term - 1.0 - (logvar_q - logvar_p)).mean()


def aggregate_prior_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(p(r) || N(0, I)) of the *aggregate* posterior p(r) = E_x p(r|x), per channel, averaged (nats).

    p(r) is moment-matched per channel by a Gaussian over batch and positions: mean m = E[mu], variance
    v = E[exp(logvar) + mu^2] - m^2; then KL = (v + m^2 - 1 - log v) / 2. As in InfoVAE this constrains the
    marginal of the codes, not each posterior, so it does not push individual codes towards noise.
    """
    dims = (0, 2, 3)
    m = mu.mean(dim=dims)
    v = (torch.exp(logvar) + mu.pow(2)).mean(dim=dims) - m.pow(2)
    v = v.clamp_min(1e-6)
    return 0.5 * (v + m.pow(2) - 1.0 - torch.log(v)).mean()


def jsd_mi_lower_bound(scores_joint: Tensor, scores_marginal: Tensor) -> Tensor:
    """Eq. 1: E_J[-softplus(-F)] - E_M[softplus(F)] (nats), in [-inf, 0]; maximise it.

    ``scores_joint``: F on matched pairs (r_i, x_i); ``scores_marginal``: F on shuffled pairs (r_i, x_j).
    Equals -log 4 when F cannot tell the pairs apart (F = 0) and tends to 0 for a perfect discriminator.
    """
    return -functional.softplus(-scores_joint).mean() - functional.softplus(scores_marginal).mean()


def shuffle_negatives(x: Tensor) -> Tensor:
    """Negatives for the marginal term: the batch rolled by one, so sample i is paired with image i-1.

    A deterministic derangement (no sample meets itself for N >= 2), which keeps runs reproducible.
    """
    return torch.roll(x, shifts=1, dims=0)


def dirnet_loss(
    mi_view1: Tensor,
    mi_view2: Tensor,
    moments_view1: tuple[Tensor, Tensor],
    moments_view2: tuple[Tensor, Tensor],
    moments_joint: tuple[Tensor, Tensor],
    lam: float,
    beta: float,
) -> dict[str, Tensor]:
    """Eq. 5: L0 = -(I(r;x1) + I(r;x2))/2 + lam * D_AKL + beta * KL(p(r)||N(0, I)).

    ``mi_view*``: JSD lower bounds (see :func:`jsd_mi_lower_bound`); ``moments_*``: (mu, logvar) of
    p_phi(r|x1), p_phi(r|x2) and of the joint encoder p(r|x1, x2). D_AKL is the mean of
    KL(p(r|x1,x2) || p_phi(r|x1)) and KL(p(r|x1,x2) || p_phi(r|x2)), the upper bound of Eq. 4.
    """
    mi = 0.5 * (mi_view1 + mi_view2)
    d_akl = 0.5 * (gaussian_kl(*moments_joint, *moments_view1) + gaussian_kl(*moments_joint, *moments_view2))
    mu = torch.cat([moments_view1[0], moments_view2[0]], dim=0)
    logvar = torch.cat([moments_view1[1], moments_view2[1]], dim=0)
    prior = aggregate_prior_kl(mu, logvar)
    return {"loss": -mi + lam * d_akl + beta * prior, "mi": mi, "d_akl": d_akl, "prior_kl": prior}


def dfrnet_loss(
    mi: Tensor, reconstruction: Tensor, target: Tensor, moments: tuple[Tensor, Tensor], beta_star: float
) -> dict[str, Tensor]:
    """Eq. 6 (InfoVAE): L* = -I(r*;y*) + E|D*(r*) - y*|_1 + beta* KL(p(r*)||N(0, I)).

    ``reconstruction`` D*(r*) and ``target`` y* are (N, 3, H, W) sRGB; the L1 is a per-pixel mean.
    """
    l1 = (reconstruction - target).abs().mean()
    prior = aggregate_prior_kl(*moments)
    return {"loss": -mi + l1 + beta_star * prior, "mi": mi, "l1": l1, "prior_kl": prior}


TaskLoss = Callable[[Tensor], Tensor]


def stage2_loss(
    r_plus: Tensor,
    r_star: Tensor,
    decoded: Tensor,
    target: Tensor,
    gamma1: float = 0.0,
    gamma2: float = 1.0,
    task_loss: TaskLoss | None = None,
    gamma_fit: float = 0.0,
) -> dict[str, Tensor]:
    """Eq. 8: L+ = |r+ - r*|_1 + gamma1 * L_task(T(D*(r+)), label) + gamma2 * |D*(r+) - y*|_1, plus
    (not in the paper; 0 by default) gamma_fit * |fit(D*(r+)) - y*|_1, the image term after the best global
    affine colour map towards y* (:func:`affine_colour_fit`).

    ``decoded`` = D*(r+) and ``target`` = y* (N, 3, H, W). ``task_loss`` maps D*(r+) to the scalar
    L_task(T(.), label) (T and the labels live in the closure); restoration uses gamma1 = 0, gamma2 = 1.
    Why the extra term: where the decoded image's colour is off by more than its detail errors, the sign of
    every pixel's L1 gradient follows the colour offset, and noise and artefacts get no gradient of their
    own; after the fit they do.
    """
    latent = (r_plus - r_star).abs().mean()
    image = (decoded - target).abs().mean()
    task = task_loss(decoded) if task_loss is not None and gamma1 != 0.0 else torch.zeros_like(latent)
    fitted = (
        (affine_colour_fit(decoded, target) - target).abs().mean()
        if gamma_fit != 0.0
        else torch.zeros_like(latent)
    )
    return {
        "loss": latent + gamma1 * task + gamma2 * image + gamma_fit * fitted,
        "latent_l1": latent,
        "image_l1": image,
        "task": task,
        "fit_l1": fitted,
    }
