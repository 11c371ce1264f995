"""Typed results returned by the client; each keeps the model version and timings the server reported."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class RestoreResult:
    """A restored image as the server encoded it (PNG or JPEG)."""

    content: bytes
    media_type: str
    model: str | None
    timings: dict[str, float]
    latency_s: float

    @property
    def extension(self) -> str:
        """File extension matching the media type (``.png`` or ``.jpg``)."""
        return ".jpg" if "jpeg" in self.media_type else ".png"

    def save(self, path: str | Path) -> Path:
        """Write the image bytes to ``path`` and return it."""
        out = Path(path)
        out.write_bytes(self.content)
        return out


@dataclass(frozen=True)
class Representation:
    """The DiR representation as a NumPy array (decoded from the server's ``.npy`` bytes)."""

    array: np.ndarray
    model: str | None
    timings: dict[str, float]
    latency_s: float
    raw: bytes = field(repr=False)

    @classmethod
    def from_npy(
        cls, raw: bytes, model: str | None, timings: dict[str, float], latency_s: float
    ) -> Representation:
        """Decode ``.npy`` bytes (never with pickle) into a result."""
        array = np.load(io.BytesIO(raw), allow_pickle=False)
        return cls(array=array, model=model, timings=timings, latency_s=latency_s, raw=raw)

    def save(self, path: str | Path) -> Path:
        """Write the server's ``.npy`` bytes unchanged to ``path`` and return it."""
        out = Path(path)
        out.write_bytes(self.raw)
        return out


@dataclass(frozen=True)
class Detection:
    """One detected object; ``box`` is (x1, y1, x2, y2) in the input image's pixels."""

    class_name: str
    class_id: int
    score: float
    box: tuple[float, float, float, float]

    @classmethod
    def from_json(cls, item: dict[str, Any]) -> Detection:
        """Build from one element of the server's ``detections`` list."""
        x1, y1, x2, y2 = (float(v) for v in item["box"])
        return cls(
            class_name=str(item["class_name"]),
            class_id=int(item["class_id"]),
            score=float(item["score"]),
            box=(x1, y1, x2, y2),
        )


@dataclass(frozen=True)
class DetectResult:
    """Detections on the restored image, and on the unrestored input when ``compare`` was asked for.

    ``model`` is the restoration model and ``detector`` the detector (both ``name/version``).
    """

    detections: list[Detection]
    unrestored: list[Detection] | None
    model: str | None
    detector: str | None
    timings: dict[str, float]
    latency_s: float
    raw: dict[str, Any] = field(repr=False)
