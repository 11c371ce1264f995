"""``python -m service.openapi > openapi.yaml``: the API description, built from the app (loads no model)."""

from __future__ import annotations

import sys
from typing import Any

import yaml

from service.api.app import create_app
from service.settings import Settings


def openapi_document() -> dict[str, Any]:
    """``app.openapi()`` of an app built with default settings (routes do not depend on settings)."""
    return create_app(Settings()).openapi()


def main() -> None:
    """Write the OpenAPI document as YAML to stdout."""
    sys.stdout.write(yaml.safe_dump(openapi_document(), sort_keys=False, allow_unicode=True, width=110))


if __name__ == "__main__":
    main()
