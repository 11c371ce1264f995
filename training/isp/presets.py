"""Named degradation presets: the parameter ranges the sampler draws from.

The names are shared by tests, benchmarks and docs (DESIGN.md section 6): ``ablation`` (paper Table 5),
``lowlight`` (paper Table 4), ``train`` (the broad training distribution) and ``default-isp`` (the camera's
untuned default settings plus sensor noise, as in the paper's detection tables).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from training.isp.errors import ParamsError
from training.isp.params import CFA_PATTERNS, DEMOSAIC_METHODS


@dataclass(frozen=True)
class Draw:
    """A uniform draw in ``[low, high]`` that happens with probability ``prob`` (else the stage is off).

    ``log=True`` draws uniformly in log space (``low > 0`` then).
    """

    low: float
    high: float
    prob: float = 1.0
    log: bool = False

    def __post_init__(self) -> None:
        if not (self.low <= self.high and 0.0 <= self.prob <= 1.0 and (not self.log or self.low > 0)):
            raise ParamsError(
                f"invalid draw: low={self.low} high={self.high} prob={self.prob} log={self.log}"
            )


#: A stage that never happens.
OFF = Draw(0.0, 0.0, prob=0.0)


@dataclass(frozen=True)
class Preset:
    """Ranges for one named degradation distribution (see docs/ISP.md for the table).

    Attributes:
        name: the registry name.
        description: one line for docs and CLI help.
        cfa_patterns: Bayer phases drawn uniformly.
        sensor_noise: probability of heteroscedastic shot/read noise (Brooks' log-linear model).
        gaussian_sigma: extra Gaussian noise standard deviation (relative to white = 1).
        poisson_lambda: Poisson noise scale.
        srgb_noise: probability that ``gaussian_sigma`` / ``poisson_lambda`` go into the forward ISP's sRGB
            output (before JPEG) rather than into the RAW mosaic.
        exposure_ev: forward digital-gain error in stops (``digital_gain = true * 2**ev``).
        wb_error: forward white-balance error factor for the red and blue gains (drawn independently).
        ccm_perturbation: maximum absolute perturbation of each forward colour-matrix entry.
        demosaic: demosaicking methods drawn uniformly.
        denoise_sigma: Gaussian denoise sigma in pixels.
        gamma: forward display gamma.
        tone_strength: forward tone-curve strength (1 = the curve the inverse ISP undid).
        sharpen_amount, sharpen_sigma: unsharp-mask amount and blur sigma in pixels.
        jpeg_quality: JPEG quality (rounded to an int).
        neutral_isp: probability that the forward ISP draws none of its errors (true gains and colour
            matrix, gamma 2.2, tone strength 1, no denoise or sharpening): a correctly rendered image.
        default_forward: the forward ISP ignores the true camera and uses fixed default gains and the
            average-camera colour matrix (the "default params ISP"); the error draws above are then unused.
    """

    name: str
    description: str
    cfa_patterns: tuple[str, ...] = CFA_PATTERNS
    sensor_noise: float = 1.0
    gaussian_sigma: Draw = OFF
    poisson_lambda: Draw = OFF
    srgb_noise: float = 0.0
    exposure_ev: Draw = OFF
    wb_error: Draw = OFF
    ccm_perturbation: float = 0.0
    demosaic: tuple[str, ...] = DEMOSAIC_METHODS
    denoise_sigma: Draw = OFF
    gamma: Draw = Draw(2.2, 2.2)
    tone_strength: Draw = Draw(1.0, 1.0)
    sharpen_amount: Draw = OFF
    sharpen_sigma: Draw = Draw(1.0, 1.0)
    jpeg_quality: Draw = OFF
    neutral_isp: float = 0.0
    default_forward: bool = False

    def __post_init__(self) -> None:
        bad_cfa = [p for p in self.cfa_patterns if p not in CFA_PATTERNS]
        bad_dm = [m for m in self.demosaic if m not in DEMOSAIC_METHODS]
        if not (0.0 <= self.srgb_noise <= 1.0 and 0.0 <= self.neutral_isp <= 1.0):
            raise ParamsError(
                f"preset {self.name!r}: srgb_noise={self.srgb_noise} and neutral_isp={self.neutral_isp} "
                "must be probabilities in [0, 1]"
            )
        if bad_cfa or bad_dm or not self.cfa_patterns or not self.demosaic:
            raise ParamsError(
                f"preset {self.name!r}: bad cfa patterns {bad_cfa} or demosaic methods {bad_dm}"
            )


#: The random ISP hyperparameters shared by the evaluation presets (our choice; [39] is not public).
_RANDOM_ISP = Preset(
    name="random-isp",
    description="random forward ISP hyperparameters, no noise",
    exposure_ev=Draw(-0.5, 0.5),
    wb_error=Draw(0.8, 1.25, log=True),
    ccm_perturbation=0.1,
    denoise_sigma=Draw(0.5, 1.2, prob=0.3),
    gamma=Draw(1.8, 2.6),
    tone_strength=Draw(0.7, 1.3),
    sharpen_amount=Draw(0.0, 1.0),
    sharpen_sigma=Draw(0.6, 1.5),
)

PRESETS: dict[str, Preset] = {
    "ablation": replace(
        _RANDOM_ISP,
        name="ablation",
        description="paper Table 5: random ISP + Gaussian sigma U[0.05, 0.1] in sRGB + JPEG quality "
        "U[10, 30]",
        sensor_noise=0.0,
        gaussian_sigma=Draw(0.05, 0.1),
        srgb_noise=1.0,
        jpeg_quality=Draw(10, 30),
    ),
    "lowlight": replace(
        _RANDOM_ISP,
        name="lowlight",
        description="paper Table 4: random ISP + Gaussian sigma U[0.15, 0.35] + Poisson lambda U[0.02, 0.04] "
        "in sRGB",
        sensor_noise=0.0,
        gaussian_sigma=Draw(0.15, 0.35),
        poisson_lambda=Draw(0.02, 0.04),
        srgb_noise=1.0,
    ),
    "train": Preset(
        name="train",
        description="broad training distribution covering the evaluation presets' ranges and beyond",
        sensor_noise=0.8,
        gaussian_sigma=Draw(0.005, 0.4, prob=0.7, log=True),
        poisson_lambda=Draw(0.002, 0.05, prob=0.3, log=True),
        srgb_noise=0.75,
        exposure_ev=Draw(-1.0, 1.0),
        wb_error=Draw(0.7, 1.4, log=True),
        ccm_perturbation=0.2,
        denoise_sigma=Draw(0.4, 1.5, prob=0.4),
        gamma=Draw(1.6, 2.8),
        tone_strength=Draw(0.4, 1.5),
        sharpen_amount=Draw(0.0, 1.5),
        sharpen_sigma=Draw(0.5, 2.0),
        jpeg_quality=Draw(8, 95, prob=0.7),
        neutral_isp=0.2,
    ),
    "mild": Preset(
        name="mild",
        description="a correctly rendered photo (no ISP errors) with real-like noise from none to moderate, "
        "sometimes JPEG 70-98",
        sensor_noise=0.7,
        gaussian_sigma=Draw(0.002, 0.04, prob=0.5, log=True),
        srgb_noise=0.5,
        jpeg_quality=Draw(70, 98, prob=0.5),
        neutral_isp=1.0,
    ),
    "still": Preset(
        name="still",
        description="a correctly rendered photo, mostly noise-free: faint noise in a third of images, "
        "JPEG 85-98 in a third",
        sensor_noise=0.2,
        gaussian_sigma=Draw(0.001, 0.01, prob=0.3, log=True),
        srgb_noise=0.5,
        jpeg_quality=Draw(85, 98, prob=0.3),
        neutral_isp=1.0,
    ),
    "default-isp": Preset(
        name="default-isp",
        description="untuned default ISP (fixed gains, mean colour matrix, bilinear), sensor noise, JPEG 90",
        sensor_noise=1.0,
        demosaic=("bilinear",),
        jpeg_quality=Draw(90, 90),
        default_forward=True,
    ),
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; raises :class:`ParamsError` listing the valid names otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ParamsError(f"unknown ISP preset {name!r}; valid presets: {sorted(PRESETS)}") from None
