"""The evaluation harness's one exception hierarchy: every error it raises is an :class:`EvaluationError`."""

from __future__ import annotations

from training.errors import DiRError


class EvaluationError(DiRError):
    """Base class of every error raised by ``training.evaluate``."""


class UnknownNameError(EvaluationError, KeyError):
    """A method, protocol or dataset name that is not registered; the message lists the valid names."""

    def __init__(self, kind: str, name: str, valid: list[str]) -> None:
        self.kind = kind
        self.name = name
        self.valid = valid
        super().__init__(f"unknown {kind} {name!r}; valid {kind}s: {', '.join(valid)}")

    def __str__(self) -> str:
        return str(self.args[0])


class DatasetMissingError(EvaluationError, FileNotFoundError):
    """A dataset folder (or a file a protocol needs inside it) is absent; the message names the path."""


class MethodUnavailableError(EvaluationError):
    """A method cannot be built here (no checkpoint, model_store entry or weights); says what is missing."""


class ProtocolError(EvaluationError):
    """A protocol cannot run (the ISP simulator or the detector is missing, or a dataset has no images)."""
