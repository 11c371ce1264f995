"""The demo page in a real browser: Playwright driving Debian's chromium against the real app on loopback.

Installs nothing: the browser is /usr/bin/chromium (``apt-get install chromium``); there is no
browser-download step. Screenshots go to test-artifacts/ (git-ignored).
"""

from __future__ import annotations

import base64
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.api.app import create_app
from service.settings import Settings
from tests.deploy.conftest import app_for, serve

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.is_file() or shutil.which(str(CHROMIUM)) is None:
        pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium); pytest -ra prints this reason")
    playwright_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is absent")
    with playwright_api.sync_playwright() as pw:
        instance = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield instance
        instance.close()


def _open_page(browser: Any, url: str) -> tuple[Any, list[str]]:
    page = browser.new_page(viewport={"width": 1100, "height": 960})
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.goto(url + "/")
    return page, problems


def _wait_restored(page: Any) -> None:
    page.wait_for_function(
        "() => { const img = document.getElementById('restored-img');"
        " return img.complete && img.naturalWidth > 0; }",
        timeout=60_000,
    )


def test_restore_split_and_detection_boxes(browser: Any, detector_store: Path, sample_jpeg: Path) -> None:
    with serve(app_for(detector_store)) as url:
        page, problems = _open_page(browser, url)
        page.check("#toggle-boxes")
        page.set_input_files("#file", str(sample_jpeg))
        _wait_restored(page)
        page.wait_for_selector("#boxes .det", timeout=60_000)
        sizes = page.evaluate(
            "() => [document.getElementById('input-img').naturalWidth,"
            " document.getElementById('restored-img').naturalWidth]"
        )
        assert sizes[0] == sizes[1] > 0
        labels = page.locator("#boxes .det span").all_inner_texts()
        assert any(label.startswith("person") for label in labels)
        assert "restore" in page.locator("#latency").inner_text()
        assert " ms" in page.locator("#latency").inner_text()
        assert page.locator("#error").is_hidden()

        area = page.locator("#compare").bounding_box()
        page.mouse.move(area["x"] + area["width"] * 0.5, area["y"] + area["height"] * 0.5)
        page.mouse.down()
        page.mouse.move(area["x"] + area["width"] * 0.3, area["y"] + area["height"] * 0.5)
        page.mouse.up()
        assert int(page.locator("#split-range").input_value()) == 30
        assert "30%" in page.locator("#restored-layer").get_attribute("style")

        page.uncheck("#toggle-boxes")
        assert page.locator("#boxes .det").count() == 0
        page.check("#toggle-boxes")
        assert page.locator("#boxes .det").count() == len(labels)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "demo_page_detections.png"), full_page=True)
        assert problems == []


def test_mode_switch_restores_again_in_full_mode(
    browser: Any, fixture_store: Path, sample_jpeg: Path
) -> None:
    """The page starts on the server's default (denoise: the stand-in entry has the graph), then full."""
    with serve(app_for(fixture_store)) as url:
        page, problems = _open_page(browser, url)
        page.set_input_files("#file", str(sample_jpeg))
        _wait_restored(page)
        page.wait_for_function("() => document.getElementById('latency').textContent.includes('denoise')")
        first = page.locator("#restored-img").get_attribute("src")
        page.select_option("#mode", "full")
        page.wait_for_function("() => document.getElementById('latency').textContent.includes('full')")
        _wait_restored(page)
        assert page.locator("#restored-img").get_attribute("src") != first
        assert page.locator("#error").is_hidden()
        assert problems == []


def test_errors_are_shown_in_the_page(browser: Any, fixture_store: Path, sample_jpeg: Path) -> None:
    with serve(app_for(fixture_store)) as url:
        page, problems = _open_page(browser, url)
        page.set_input_files("#file", str(sample_jpeg))
        _wait_restored(page)
        page.check("#toggle-boxes")
        error = page.locator("#error")
        error.wait_for(state="visible", timeout=60_000)
        assert "Detection failed: HTTP 503" in error.inner_text()
        assert "no detector installed" in error.inner_text()
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "demo_page_no_detector.png"), full_page=True)

        page.set_input_files("#file", files=[{"name": "x.jpg", "mimeType": "image/jpeg", "buffer": b"nope"}])
        page.wait_for_function("() => document.getElementById('error').textContent.includes('HTTP 4')")
        assert "Restore failed: HTTP 415" in error.inner_text()
        assert problems == []


def test_drop_an_image_with_an_api_key(browser: Any, fixture_store: Path, sample_jpeg: Path) -> None:
    """Drag-and-drop into the drop zone; 401 shown without the key, restored once the key is entered."""
    settings = Settings(
        model_store=fixture_store, queue="embedded", providers="CPUExecutionProvider", api_keys="demo-key"
    )
    with serve(create_app(settings)) as url:
        page, problems = _open_page(browser, url)
        drop = (
            "async ([name, b64]) => {"
            " const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));"
            " const data = new DataTransfer();"
            " data.items.add(new File([bytes], name, { type: 'image/jpeg' }));"
            " document.getElementById('drop').dispatchEvent("
            "   new DragEvent('drop', { dataTransfer: data, bubbles: true, cancelable: true }));"
            "}"
        )
        payload = [sample_jpeg.name, base64.b64encode(sample_jpeg.read_bytes()).decode()]
        page.evaluate(drop, payload)
        error = page.locator("#error")
        error.wait_for(state="visible", timeout=60_000)
        assert "Restore failed: HTTP 401" in error.inner_text()

        page.fill("#api-key", "demo-key")
        page.evaluate(drop, payload)
        _wait_restored(page)
        assert error.is_hidden()
        assert page.evaluate("() => document.getElementById('input-img').naturalWidth") > 0
        assert problems == []
