"""The one exception root of the training package: every error raised on purpose by training/ (models, train,
export, the ISP simulator, evaluation) is a :class:`DiRError`."""

from __future__ import annotations


class DiRError(Exception):
    """Base class of every error raised on purpose by the training package."""


class ConfigError(DiRError):
    """A training config is invalid (unknown key, wrong type, bad value)."""


class DataError(DiRError):
    """A data folder is missing, empty, or holds files that are not images."""


class CheckpointError(DiRError):
    """A checkpoint or run folder is missing, incomplete, or of the wrong kind."""


class ExportError(DiRError):
    """ONNX export failed its checker or its parity test against PyTorch."""
