"""openapi.yaml must equal ``app.openapi()`` (regenerate: python -m service.openapi)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from service.openapi import openapi_document

ROOT = Path(__file__).resolve().parents[2]


def test_openapi_yaml_matches_the_app() -> None:
    committed = yaml.safe_load((ROOT / "openapi.yaml").read_text())
    live = json.loads(json.dumps(openapi_document()))
    assert committed == live, (
        "openapi.yaml is stale: run `.venv/bin/python -m service.openapi > openapi.yaml`"
    )


def test_every_endpoint_is_described() -> None:
    paths = openapi_document()["paths"]
    for path in (
        "/v1/restore",
        "/v1/represent",
        "/v1/detect",
        "/v1/models",
        "/healthz",
        "/readyz",
        "/metrics",
    ):
        assert path in paths
    assert "multipart/form-data" in paths["/v1/restore"]["post"]["requestBody"]["content"]


def test_every_schema_reference_resolves() -> None:
    document = openapi_document()
    schemas = document["components"]["schemas"]
    text = json.dumps(document)
    prefix = '"$ref": "#/components/schemas/'
    refs = {chunk.split('"', 1)[0] for chunk in text.split(prefix)[1:]}
    assert refs and refs <= set(schemas), f"dangling: {refs - set(schemas)}"
