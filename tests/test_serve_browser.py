"""The web page of `maskformer serve` in a real browser: Playwright for Python driving Debian's chromium (launched by
its path; no browser download) against a real uvicorn server on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = os.environ.get("MASKFORMER_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run"]  # fmt: skip

pytest.importorskip("starlette", reason="the serve extra is not installed (pip install -e '.[serve]')")
httpx = pytest.importorskip("httpx", reason="httpx is not installed (dev extra)")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (pip package) is not installed (dev extra)")
if not Path(CHROMIUM).is_file():
    pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium; .ci/run does)", allow_module_level=True)

from serve_utils import META, start_server, write_model, write_photo  # noqa: E402

from maskformer.io import rle_decode  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_browser")
    photo = write_photo(root / "photo.png", size=(96, 128), seed=5)
    server = start_server(write_model(root / "model"))
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        page.on("pageerror", lambda e: pytest.fail(f"JavaScript error on the page: {e}"))
        yield {"root": root, "photo": photo, "server": server, "page": page}
        browser.close()
    server.stop()


def canvas_pixels(page, canvas: str) -> np.ndarray:
    data = page.evaluate(
        """(id) => { const c = document.getElementById(id);
                     return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data); }""",
        canvas,
    )
    return np.asarray(data, dtype=np.uint8).reshape(-1, 4)[:, :3]


def test_page_upload_overlay_legend_hover_opacity(setup):
    page, server, photo = setup["page"], setup["server"], setup["photo"]
    page.goto(server.url + "/")
    page.wait_for_function("document.getElementById('task').options.length === 3")
    page.set_input_files("#file-input", str(photo))
    page.wait_for_selector("body[data-state=ready]", timeout=20_000)

    expected = httpx.post(f"{server.url}/predict", content=photo.read_bytes()).json()  # what the page asked for
    segments = expected["segments"]
    legend = page.eval_on_selector_all("#legend li", "items => items.map(li => li.dataset.label)")
    assert sorted(legend) == sorted(s["label"] for s in segments) and set(legend) <= set(META.class_names)
    assert page.inner_text("#legend").count("\n") >= len(legend) - 1

    # hover the middle of the largest segment's pixels: the read-out names its class
    largest = max(segments, key=lambda s: s["area"])
    ys, xs = np.nonzero(rle_decode(largest["rle"]))
    y, x = int(np.median(ys)), int(xs[np.argsort(ys)[len(ys) // 2]])
    box = page.locator("#overlay").bounding_box()
    scale = box["width"] / expected["width"]
    page.mouse.move(box["x"] + (x + 0.5) * scale, box["y"] + (y + 0.5) * scale)
    assert page.inner_text("#hover-info") == largest["label"]

    # the opacity slider repaints the canvas; at 0 the overlay is the photo itself
    before = canvas_pixels(page, "overlay")
    page.locator("#opacity").fill("0")
    at_zero = canvas_pixels(page, "overlay")
    assert (at_zero != before).any()
    np.testing.assert_array_equal(at_zero, canvas_pixels(page, "photo"))
    page.locator("#opacity").fill("80")

    # legend click: highlight, then hide (the canvas changes each time)
    entry = page.locator("#legend li").first
    shown = canvas_pixels(page, "overlay")
    entry.click()
    assert "highlight" in entry.get_attribute("class")
    entry.click()
    assert "hidden" in entry.get_attribute("class")
    assert (canvas_pixels(page, "overlay") != shown).any()
    entry.click()
    np.testing.assert_array_equal(canvas_pixels(page, "overlay"), shown)

    # switch task: the page asks again and the legend follows
    page.select_option("#task", "panoptic")
    page.wait_for_function("document.getElementById('status').textContent.includes('segment')")
    page.wait_for_selector("body[data-state=ready]")
    screenshot = setup["root"] / "serve_page.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000
    if os.environ.get("MASKFORMER_SCREENSHOT"):  # keep a copy to look at
        shutil.copy(screenshot, os.environ["MASKFORMER_SCREENSHOT"])


def test_examples_load(setup):
    page = setup["page"]
    page.goto(setup["server"].url + "/")
    page.wait_for_selector("#examples img")
    assert page.locator("#examples img").count() == 3
    page.locator("#examples img").nth(1).click()
    page.wait_for_selector("body[data-state=ready]", timeout=20_000)
    assert page.locator("#legend li").count() >= 1
    assert page.evaluate("document.getElementById('overlay').width") == 320
