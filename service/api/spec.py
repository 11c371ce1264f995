"""Shared pieces of the OpenAPI description: the image request body, the error responses, the mode help."""

from __future__ import annotations

from typing import Any

from service.schemas import ErrorBody

API_VERSION = "1.0.0"

IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/webp": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
        },
    }
}
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        401: "missing or unknown API key (when DIR_API_KEYS is set); WWW-Authenticate: Bearer",
        408: "the body did not arrive within DIR_BODY_TIMEOUT_S",
        413: "body, pixel count, request cost or JSON output over its limit",
        415: "not a PNG, JPEG or WebP image",
        422: "truncated image, image side or aspect ratio out of bounds, or bad parameter",
        429: "queue full (Retry-After)",
        404: "model_not_found: ?model= names no entry this service serves (see GET /v1/models)",
        503: "model or queue unavailable (Retry-After)",
        504: "deadline passed",
    }.items()
}
MODEL_HELP = (
    "the served restoration entry to run: 'name/version' or 'name' (GET /v1/models lists them: "
    "DIR_RESTORE_MODEL, the default, and DIR_SERVE_MODELS)"
)
MODE_HELP = (
    "full: DiR restoration, which also corrects the ISP's colour and tone errors (exposure, white balance, "
    "gamma); denoise: removes noise and compression artefacts but keeps the camera's colour and tone (for "
    "correctly tuned cameras). Without it: the server's default (DIR_RESTORE_MODE; full for a task-aligned "
    "entry; GET /v1/models lists the modes each served model offers and its default)"
)
