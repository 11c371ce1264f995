"""Global colour fits: the best affine map of RGB from one image to another (a loss term in Stage II and
the ``colour_fit`` diagnostic of ``dir-train score`` and scripts/colour_fit_methods.py)."""

from __future__ import annotations

import torch
from torch import Tensor


def affine_colour_fit(image: Tensor, target: Tensor, ridge: float = 1e-6) -> Tensor:
    """``image`` recoloured by its best global affine map of RGB towards ``target``, differentiably.

    Per image, the 3x4 matrix ``M`` minimising ``sum_p |M [x_p; 1] - t_p|^2`` over the pixels, from the normal
    equations with ``ridge`` added to the diagonal (in the inputs' dtype; a flat image stays solvable),
    applied to ``image``. (N, 3, H, W) each -> (N, 3, H, W), not clamped. An image that already is an affine
    map of ``target`` comes back as ``target`` (up to the ridge).
    """
    n, c, h, w = image.shape
    ones = torch.ones(n, 1, h * w, dtype=image.dtype, device=image.device)
    features = torch.cat([image.reshape(n, c, h * w), ones], dim=1)
    pixels = float(h * w)
    gram = features @ features.transpose(1, 2) / pixels
    gram = gram + ridge * torch.eye(c + 1, dtype=image.dtype, device=image.device)
    cross = features @ target.reshape(n, c, h * w).transpose(1, 2) / pixels
    matrix = torch.linalg.solve(gram, cross)
    return (matrix.transpose(1, 2) @ features).reshape(n, c, h, w)


def colour_fit(image: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """``image`` after the best global affine colour correction towards ``clean``: per image, the affine map
    of RGB (a 3x4 matrix, least squares over every pixel in float64, :func:`affine_colour_fit`)
    fitted to ``clean`` and applied, clamped to [0, 1]. (N, 3, H, W) sRGB in [0, 1] each -> (N, 3, H, W)
    sRGB in [0, 1].

    A diagnostic that reads the clean image, not a restoration method: the PSNR it leaves is the error that
    no global affine colour change removes (noise, artefacts, blur, local colour, the non-affine part of a
    tone curve), so comparing it with the plain PSNR splits an error into a global-colour part and the rest.
    """
    fitted = affine_colour_fit(image.double(), clean.double(), ridge=1e-12)
    return fitted.to(image.dtype).clamp(0.0, 1.0)
