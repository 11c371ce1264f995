"""/v1/detect with a real detector entry installed from the local Yolo-FastestV2 weights (never committed)."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from service.settings import Settings
from tests.service.conftest import serve


async def test_detect_compare_and_annotate(
    make_settings: Callable[..., Settings], detector_store: Path, dataset: Callable[[str], Path]
) -> None:
    photo = dataset("yolo_fastestv2") / "img" / "000004.jpg"
    width, height = Image.open(photo).size
    async with serve(make_settings(model_store=detector_store, detect_model="")) as client:
        plain = await client.post("/v1/detect", content=photo.read_bytes())
        full = await client.post(
            "/v1/detect?compare=true&annotate=true",
            files={"file": ("p.jpg", photo.read_bytes(), "image/jpeg")},
        )
        denoised = await client.post("/v1/detect?mode=denoise", content=photo.read_bytes())
        models = (await client.get("/v1/models")).json()
    assert plain.status_code == 200, plain.text
    body = plain.json()
    assert body["detector"] == "yolo-fastestv2/1" and body["model"] == "dir-restore/0.0.1"
    assert body["restore_mode"] == "full"
    assert denoised.status_code == 200 and denoised.json()["restore_mode"] == "denoise"
    assert body["input_detections"] is None and body["annotated_image"] is None
    assert body["detections"], "the sample photo has objects"
    for det in body["detections"]:
        x1, y1, x2, y2 = det["box"]
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
        assert 0 < det["score"] <= 1 and det["class_name"]
    data = full.json()
    assert full.status_code == 200
    assert data["input_detections"]
    annotated = Image.open(io.BytesIO(base64.b64decode(data["annotated_image"])))
    assert annotated.size == (width, height)
    assert models["detect"] == "yolo-fastestv2/1"
