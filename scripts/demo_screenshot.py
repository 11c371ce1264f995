"""The demo-page picture of docs/DEPLOY.md: one photo restored in ``full`` and in ``denoise`` mode.

Starts ``dir-serve`` on a model store (the committed one by default; when the store also holds a detector
entry, e.g. from ``dir-models add-detector``, detections are drawn), opens ``GET /`` in Debian's chromium
with Playwright, restores IMAGE in each mode with the split at 50 % and detections on, and writes the two
page screenshots side by side as one JPEG. Prints each mode's latency line and detection labels, for the
caption.

    python scripts/demo_screenshot.py IMAGE [--model-store DIR] [--out docs/img/deploy_demo_page.jpg]
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
MODES = ("full", "denoise")


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(store: Path, port: int) -> subprocess.Popen[bytes]:
    """``dir-serve`` on ``store`` at ``port``, returned once ``/readyz`` answers 200."""
    env = {**os.environ, "DIR_MODEL_STORE": str(store)}
    serve = "from service.cli import serve; serve()"
    cmd = [sys.executable, "-c", serve, "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"dir-serve exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise SystemExit("dir-serve did not become ready in 120 s")


def shoot(url: str, image: Path, detections: bool) -> list[tuple[bytes, str, list[str]]]:
    """Per mode: (PNG screenshot of the page, its latency line, the detection labels drawn)."""
    from playwright.sync_api import sync_playwright  # optional: screenshots only

    shots = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = browser.new_page(viewport={"width": 900, "height": 900})
        page.goto(url + "/")
        if detections:
            page.check("#toggle-boxes")
        for mode in MODES:
            page.select_option("#mode", mode)
            page.set_input_files("#file", str(image))
            page.wait_for_function(
                "m => document.getElementById('latency').textContent.includes(m)", arg=mode, timeout=120_000
            )
            if detections:
                page.wait_for_selector("#boxes .det", timeout=120_000)
            labels = page.locator("#boxes .det span").all_inner_texts()
            shots.append((page.screenshot(full_page=True), page.locator("#latency").inner_text(), labels))
        browser.close()
    return shots


def main(argv: list[str] | None = None) -> int:
    """CLI entry: serve, shoot both modes, write the side-by-side JPEG."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", type=Path, help="a JPEG/PNG/WebP photo")
    parser.add_argument("--model-store", type=Path, default=ROOT / "model_store")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "deploy_demo_page.jpg")
    parser.add_argument("--width", type=int, default=1400, help="width of the written JPEG in pixels")
    args = parser.parse_args(argv)
    if not CHROMIUM.is_file():
        parser.error(f"{CHROMIUM} is absent (apt-get install chromium)")
    if not args.image.is_file():
        parser.error(f"{args.image} is not a file")
    port = free_port()
    server = start_server(args.model_store, port)
    try:
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10).json()
        detections = bool(models.get("detect"))
        shots = shoot(f"http://127.0.0.1:{port}", args.image, detections)
    finally:
        server.terminate()
        server.wait(timeout=30)
    pages = [Image.open(io.BytesIO(png)).convert("RGB") for png, _, _ in shots]
    height = max(p.height for p in pages)
    sheet = Image.new("RGB", (sum(p.width for p in pages), height), "white")
    x = 0
    for page in pages:
        sheet.paste(page, (x, 0))
        x += page.width
    if sheet.width > args.width:
        size = (args.width, round(sheet.height * args.width / sheet.width))
        sheet = sheet.resize(size, Image.Resampling.LANCZOS)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out, quality=80)
    for mode, (_, latency, labels) in zip(MODES, shots, strict=True):
        print(f"{mode}: {latency} | detections: {', '.join(labels) or 'none'}")
    print(f"wrote {args.out} ({sheet.width}x{sheet.height})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
