"""Colour constants and colour-matrix helpers (Brooks et al. 2019, "Unprocessing images").

Colour spaces used across the package:

* **sRGB**: display-referred, gamma-encoded and tone-mapped, values in ``[0, 1]``.
* **linear RGB**: linear light with sRGB (BT.709) primaries, values in ``[0, 1]``.
* **camera RGB**: linear light in a camera's native primaries (after ``rgb2cam``), values in ``[0, 1]``.
* **RAW**: a single-channel Bayer mosaic of camera RGB with white balance and digital gain undone.
"""

from __future__ import annotations

import numpy as np

#: Linear sRGB (D65) -> CIE XYZ.
RGB2XYZ = np.array(
    [
        [0.4124564, 0.3575761, 0.1804375],
        [0.2126729, 0.7151522, 0.0721750],
        [0.0193339, 0.1191920, 0.9503041],
    ],
    dtype=np.float64,
)

#: CIE XYZ -> camera RGB of four real cameras, as published with Brooks et al. 2019 (from dcraw's tables).
XYZ2CAMS = np.array(
    [
        [[1.0234, -0.2969, -0.2266], [-0.5625, 1.6328, -0.0469], [-0.0703, 0.2188, 0.6406]],
        [[0.4913, -0.0541, -0.0202], [-0.6130, 1.3513, 0.2906], [-0.1564, 0.2151, 0.7183]],
        [[0.8380, -0.2630, -0.0639], [-0.2887, 1.0725, 0.2496], [-0.0627, 0.1427, 0.5438]],
        [[0.6596, -0.2079, -0.0562], [-0.4782, 1.3016, 0.1933], [-0.0970, 0.1581, 0.5181]],
    ],
    dtype=np.float64,
)


def rgb2cam_from_weights(weights: np.ndarray) -> np.ndarray:
    """Linear RGB -> camera RGB matrix ``(3, 3)`` for a convex mix of the :data:`XYZ2CAMS` cameras.

    ``weights`` has shape ``(4,)``, non-negative, not all zero; it is normalised to sum to 1. The mixed
    XYZ->camera matrix is multiplied by :data:`RGB2XYZ` and its rows are normalised to sum to 1, so a
    neutral (grey) linear RGB pixel maps to a neutral camera pixel.
    """
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    xyz2cam = np.tensordot(w, XYZ2CAMS, axes=1)
    rgb2cam = xyz2cam @ RGB2XYZ
    return rgb2cam / rgb2cam.sum(axis=1, keepdims=True)


def random_rgb2cam(rng: np.random.Generator) -> np.ndarray:
    """A random linear RGB -> camera RGB matrix ``(3, 3)``: mixing weights ``U(1e-8, 1e8)`` as in Brooks."""
    return rgb2cam_from_weights(rng.uniform(1e-8, 1e8, size=len(XYZ2CAMS)))


#: The "average camera" matrix: an equal-weight mix, used by the untuned default ISP.
DEFAULT_RGB2CAM = rgb2cam_from_weights(np.ones(len(XYZ2CAMS)))
