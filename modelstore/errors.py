"""The model store's one exception root. It carries no HTTP status: the service maps it to its own 503."""

from __future__ import annotations


class ModelStoreError(Exception):
    """A model_store entry is missing, malformed, or fails its sha256 check: refused.

    ``message`` is the text naming the entry, the file and the offending value.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
