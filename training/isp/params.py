"""The typed, JSON-serialisable record of every value one image's degradation was drawn with."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from training.isp.errors import ParamsError

Matrix3 = tuple[tuple[float, float, float], tuple[float, float, float], tuple[float, float, float]]

#: Bayer colour-filter phases: the colours of the top-left 2x2 block, row by row.
CFA_PATTERNS = ("RGGB", "BGGR", "GRBG", "GBRG")
#: Demosaicking methods of the forward ISP.
DEMOSAIC_METHODS = ("bilinear", "malvar")
#: Where the protocols' Gaussian/Poisson noise enters: the RAW mosaic or the forward ISP's sRGB output.
NOISE_DOMAINS = ("raw", "srgb")


def as_matrix3(m: Any) -> Matrix3:
    """A ``(3, 3)`` array-like as a tuple of tuples of Python floats."""
    a = np.asarray(m, dtype=np.float64)
    if a.shape != (3, 3) or not np.all(np.isfinite(a)):
        raise ParamsError(f"a colour matrix must be a finite 3x3 array, got shape {a.shape}: {a.tolist()}")
    r0, r1, r2 = (tuple(float(v) for v in row) for row in a)
    return ((r0[0], r0[1], r0[2]), (r1[0], r1[1], r1[2]), (r2[0], r2[1], r2[2]))


@dataclass(frozen=True)
class ISPParams:
    """Everything needed to reproduce one image's degradation (with the clean image).

    Inverse ISP (the scene and camera the clean sRGB image is "unprocessed" into):
        cfa: Bayer phase, one of :data:`CFA_PATTERNS`.
        rgb2cam: linear RGB -> camera RGB, rows sum to 1.
        rgb_gain, red_gain, blue_gain: the camera's true digital gain and white-balance gains, undone in RAW.

    Noise (values relative to white = 1):
        shot_noise, read_noise: heteroscedastic sensor noise in the RAW mosaic, variance
            ``shot_noise * x + read_noise``.
        gaussian_sigma: extra signal-independent Gaussian noise, standard deviation.
        poisson_lambda: Poisson noise scale: ``x -> Poisson(x / lambda) * lambda`` (0 = off).
        noise_domain: where ``gaussian_sigma`` and ``poisson_lambda`` are added: ``"raw"`` (the mosaic,
            before the forward ISP amplifies them) or ``"srgb"`` (the forward ISP's output, before JPEG).
        noise_seed: seeds the per-image torch generator the noise is drawn from.

    Forward ISP (the hyperparameters the simulated camera actually used):
        digital_gain, wb_red_gain, wb_blue_gain: gains applied to RAW (the truth when exact).
        cam2rgb: camera RGB -> linear RGB (``inverse(rgb2cam)`` when exact).
        demosaic: one of :data:`DEMOSAIC_METHODS`.
        denoise_sigma: Gaussian denoise in linear RGB, pixels (0 = off).
        gamma: display gamma, output is ``linear ** (1 / gamma)``.
        tone_strength: blend of the smoothstep tone curve, 1 = the curve undone by the inverse ISP, 0 = none.
        sharpen_amount, sharpen_sigma: unsharp mask ``x + amount * (x - blur_sigma(x))`` in sRGB.
        jpeg_quality: JPEG quality 1..100, or ``None`` for no compression.
        preset: name of the preset it was drawn from (informative).
    """

    cfa: str
    rgb2cam: Matrix3
    rgb_gain: float
    red_gain: float
    blue_gain: float
    shot_noise: float
    read_noise: float
    gaussian_sigma: float
    poisson_lambda: float
    noise_seed: int
    digital_gain: float
    wb_red_gain: float
    wb_blue_gain: float
    cam2rgb: Matrix3
    demosaic: str
    denoise_sigma: float
    gamma: float
    tone_strength: float
    sharpen_amount: float
    sharpen_sigma: float
    jpeg_quality: int | None
    noise_domain: str = "raw"
    preset: str = ""

    def __post_init__(self) -> None:
        if self.cfa not in CFA_PATTERNS:
            raise ParamsError(f"cfa must be one of {CFA_PATTERNS}, got {self.cfa!r}")
        if self.noise_domain not in NOISE_DOMAINS:
            raise ParamsError(f"noise_domain must be one of {NOISE_DOMAINS}, got {self.noise_domain!r}")
        if self.demosaic not in DEMOSAIC_METHODS:
            raise ParamsError(f"demosaic must be one of {DEMOSAIC_METHODS}, got {self.demosaic!r}")
        object.__setattr__(self, "rgb2cam", as_matrix3(self.rgb2cam))
        object.__setattr__(self, "cam2rgb", as_matrix3(self.cam2rgb))
        positive = (
            "rgb_gain",
            "red_gain",
            "blue_gain",
            "digital_gain",
            "wb_red_gain",
            "wb_blue_gain",
            "gamma",
        )
        for name in positive:
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise ParamsError(f"{name} must be a finite number > 0, got {v!r}")
        non_negative = (
            "shot_noise",
            "read_noise",
            "gaussian_sigma",
            "poisson_lambda",
            "denoise_sigma",
            "tone_strength",
            "sharpen_amount",
            "sharpen_sigma",
        )
        for name in non_negative:
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
                raise ParamsError(f"{name} must be a finite number >= 0, got {v!r}")
        if not (isinstance(self.noise_seed, int) and 0 <= self.noise_seed < 2**63):
            raise ParamsError(f"noise_seed must be an int in [0, 2**63), got {self.noise_seed!r}")
        q = self.jpeg_quality
        if q is not None and not (isinstance(q, int) and 1 <= q <= 100):
            raise ParamsError(f"jpeg_quality must be None or an int in [1, 100], got {q!r}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (matrices as nested lists)."""
        d = dataclasses.asdict(self)
        d["rgb2cam"] = [list(r) for r in self.rgb2cam]
        d["cam2rgb"] = [list(r) for r in self.cam2rgb]
        return d

    def to_json(self) -> str:
        """The record as a JSON object string; :meth:`from_json` reads it back exactly."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ISPParams:
        """Build from :meth:`to_dict` output; unknown or missing keys raise :class:`ParamsError`."""
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
        unknown, missing = set(d) - names, required - set(d)
        if unknown or missing:
            raise ParamsError(f"ISP params: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> ISPParams:
        """Parse one record written by :meth:`to_json`."""
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ParamsError(f"ISP params are not valid JSON: {e}") from e
        if not isinstance(d, dict):
            raise ParamsError(f"ISP params JSON must be an object, got {type(d).__name__}")
        return cls.from_dict(d)

    def exact(self) -> ISPParams:
        """A copy whose forward ISP exactly undoes the inverse ISP, with no noise and no JPEG.

        Forward gains and colour matrix become the true ones, gamma 2.2, tone strength 1, no denoise, no
        sharpening. ``process(unprocess(x))`` with these parameters reproduces ``x`` up to demosaicking and
        highlight protection (see docs/ISP.md).
        """
        return dataclasses.replace(
            self,
            shot_noise=0.0,
            read_noise=0.0,
            gaussian_sigma=0.0,
            poisson_lambda=0.0,
            digital_gain=self.rgb_gain,
            wb_red_gain=self.red_gain,
            wb_blue_gain=self.blue_gain,
            cam2rgb=as_matrix3(np.linalg.inv(np.asarray(self.rgb2cam))),
            denoise_sigma=0.0,
            gamma=2.2,
            tone_strength=1.0,
            sharpen_amount=0.0,
            jpeg_quality=None,
        )
