"""Contact sheet: one image's clean input, intermediate stages and degraded output side by side, labelled."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from training.isp.params import ISPParams
from training.isp.pipeline import SimResult
from training.isp.unprocess import cfa_onehot

#: Stages in sheet order: (stage key or "clean"/"degraded", label, shown with a viewing gamma of 1/2.2).
_PANELS = (
    ("clean", "clean sRGB", False),
    ("linear RGB", "linear RGB", True),
    ("RAW (noisy)", "noisy RAW mosaic", True),
    ("demosaiced", "demosaiced camera RGB", True),
    ("gamma + tone", "gamma + tone curve", False),
    ("degraded", "degraded (sharpen, JPEG)", False),
)
_LABEL_H = 18


def _colourise_mosaic(raw: torch.Tensor, cfa: str) -> torch.Tensor:
    """``(1, H, W)`` mosaic -> ``(3, H, W)`` image with each site drawn in its filter colour."""
    h, w = raw.shape[-2:]
    tile = cfa_onehot([cfa], raw.device)[0].to(raw.dtype)
    return raw * tile.repeat(1, h // 2, w // 2)


def _to_pil(image: torch.Tensor, view_gamma: bool, max_side: int) -> Image.Image:
    """``(3, H, W)`` float image -> RGB PIL image, optionally gamma-encoded for viewing, downscaled."""
    x = image.detach().float().cpu().clamp(0.0, 1.0)
    if view_gamma:
        x = x ** (1.0 / 2.2)
    arr = (x.permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    im = Image.fromarray(arr, mode="RGB")
    scale = max_side / max(im.size)
    if scale < 1.0:
        im = im.resize(
            (max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.BOX
        )
    return im


def _summary(p: ISPParams) -> list[str]:
    """Two lines of the drawn hyperparameters."""
    ev = np.log2(p.digital_gain / p.rgb_gain)
    jpeg = "off" if p.jpeg_quality is None else f"q{p.jpeg_quality}"
    return [
        f"{p.preset}  {p.cfa} {p.demosaic}  exposure {ev:+.2f} EV  WB error "
        f"r x{p.wb_red_gain / p.red_gain:.2f} b x{p.wb_blue_gain / p.blue_gain:.2f}  "
        f"gamma {p.gamma:.2f}  tone {p.tone_strength:.2f}",
        f"denoise {p.denoise_sigma:.2f}  sharpen {p.sharpen_amount:.2f}  RAW noise: "
        f"sigma {p.gaussian_sigma:.3f} lambda {p.poisson_lambda:.3f} shot {p.shot_noise:.1e}  JPEG {jpeg}",
    ]


def contact_sheet(result: SimResult, index: int = 0, max_side: int = 256) -> Image.Image:
    """A labelled RGB sheet of image ``index`` of ``result`` (simulated with ``keep_stages=True``).

    Panels: clean, linear RGB, noisy RAW (each site in its filter colour, white balance undone),
    demosaiced camera RGB (after the forward gains, before the colour matrix), gamma + tone, degraded.
    Linear panels are shown with a viewing gamma of 1/2.2. Two last lines list the drawn hyperparameters.
    """
    p = result.params[index]
    h, w = result.clean.shape[-2:]
    images: dict[str, torch.Tensor] = {"clean": result.clean[index], "degraded": result.degraded[index]}
    for key, stage in result.stages.items():
        images[key] = stage[index, :, :h, :w]
    if "RAW (noisy)" in images:
        images["RAW (noisy)"] = _colourise_mosaic(result.stages["RAW (noisy)"][index], p.cfa)[:, :h, :w]
    tiles = [(label, _to_pil(images[key], gamma, max_side)) for key, label, gamma in _PANELS if key in images]
    tw, th = tiles[0][1].size
    font = ImageFont.load_default()
    summary = _summary(p)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max(int(measure.textlength(line, font=font)) for line in summary) + 8
    cols = 3
    rows = -(-len(tiles) // cols)
    sheet = Image.new(
        "RGB", (max(cols * tw, text_w), rows * (th + _LABEL_H) + len(summary) * _LABEL_H), "white"
    )
    draw = ImageDraw.Draw(sheet)
    for i, (label, tile) in enumerate(tiles):
        x, y = (i % cols) * tw, (i // cols) * (th + _LABEL_H)
        draw.text((x + 4, y + 3), label, fill="black", font=font)
        sheet.paste(tile, (x, y + _LABEL_H))
    for j, line in enumerate(summary):
        draw.text((4, rows * (th + _LABEL_H) + j * _LABEL_H + 3), line, fill="black", font=font)
    return sheet
