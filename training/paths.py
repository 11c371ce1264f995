"""Where the project finds data that is never committed (public datasets, third-party weights)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_ENV = "DIR_DATA_ROOT"


def data_root() -> Path:
    """The shared data folder: ``$DIR_DATA_ROOT`` if set, else ``<repo>/../shared/data``.

    The folder may be absent (a user's fresh clone); callers that need it check ``exists()`` and say so.
    """
    env = os.environ.get(DATA_ENV)
    return Path(env).expanduser().resolve() if env else (REPO_ROOT.parent / "shared" / "data").resolve()


def dataset_dir(name: str) -> Path:
    """One dataset folder under :func:`data_root`, e.g. ``dataset_dir("cset14")``."""
    return data_root() / name
