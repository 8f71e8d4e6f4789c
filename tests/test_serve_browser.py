"""The page of `torso serve`, in a real browser: `torso serve RUN --port 0` runs as a user runs
it, Playwright drives Debian's headless Chromium (`/usr/bin/chromium`; Playwright's own browser
download is not used), uploads a Fashion-MNIST image as `torso demo` writes them, and checks
the class shown, the heatmap drawn over the image, and that the page fetched nothing from
anywhere but the server. A screenshot is saved in the test's temporary folder.

Chromium must be installed: `scripts/test` installs it with apt-get when it runs as root (as
CI does); otherwise this test fails and says how to install it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from serve_helpers import fashion_image, saved_run

import torso
from torso.data.demo import FASHION_CLASSES

CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium() -> str:
    """The system Chromium, or a failure that says how to install it."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and Path("/usr/bin/chromium").exists():
        found = "/usr/bin/chromium"
    if found is None:
        pytest.fail(
            "the browser test needs Debian's Chromium: apt-get install chromium (as root; "
            "scripts/test does it when run as root)"
        )
    return found


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium, headless, driven by Playwright."""
    from playwright.sync_api import sync_playwright

    path = chromium()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def served(tmp_path):
    """`torso serve` of a Fashion-MNIST-like classification run (random weights, the demo's
    64-pixel input), started as a command; yields (base URL, run folder)."""
    run = saved_run(tmp_path / "demo-classify", "classify", FASHION_CLASSES, 64)
    command = [sys.executable, "-m", "torso", "serve", str(run), "--port", "0"]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        line = process.stdout.readline()
        found = re.search(r"at (http://127\.0\.0\.1:\d+)/", line)
        assert found, f"torso serve did not start: {line}{process.stdout.read()}"
        yield found.group(1), run
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert process.returncode == 0, process.stdout.read()  # Ctrl-C stops it cleanly


def test_the_page_classifies_a_dropped_image_and_draws_its_heatmap(served, browser, tmp_path):
    url, run = served
    image, _ = fashion_image(tmp_path / "valid-00000.png")
    expected = torso.load(run).predict([image])[0]["prediction"]
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not an image")
    requested, problems = [], []
    page = browser.new_page(viewport={"width": 1100, "height": 800})
    try:
        page.on("request", lambda request: requested.append(request.url))
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.on(
            "console",
            lambda message: problems.append(message.text) if message.type == "error" else None,
        )
        page.goto(url + "/")
        page.wait_for_selector("body[data-ready='1']", timeout=30_000)
        assert page.text_content("#run-name") == "demo-classify"
        assert "ankle-boot" in page.text_content("#classes")

        page.set_input_files("#file", str(image))
        page.wait_for_selector("#answer[data-state='done']", timeout=60_000)
        assert page.text_content("#top-class") == expected
        assert page.locator("#top-classes li").count() == 5
        assert page.get_attribute("canvas.overlay", "data-heatmap") == "drawn"
        # The heatmap layer covers the image with more than one colour.
        coverage, colours = page.evaluate(OVERLAY_PIXELS)
        assert coverage > 0.99 and colours > 20
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)

        # A file that is not an image: the server's one-line reason, shown on the page.
        page.set_input_files("#file", str(not_an_image))
        page.wait_for_selector("#answer[data-state='error']", state="attached", timeout=30_000)
        assert "'notes.png': not a readable image" in page.text_content("#status")
    finally:
        page.close()
    assert (tmp_path / "page.png").stat().st_size > 10_000
    # The one console error: the refused upload's 400.
    assert [problem for problem in problems if "status of 400" not in problem] == []
    outside = [address for address in requested if not address.startswith((url, "blob:", "data:"))]
    assert outside == []


#: The share of the overlay canvas's pixels that are not transparent, and its distinct colours.
OVERLAY_PIXELS = """() => {
    const canvas = document.querySelector('canvas.overlay');
    const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    let covered = 0;
    const seen = new Set();
    for (let i = 0; i < data.length; i += 4) {
        if (data[i + 3] > 0) covered++;
        seen.add(data[i] + ',' + data[i + 1] + ',' + data[i + 2]);
    }
    return [covered / (data.length / 4), seen.size];
}"""


@pytest.mark.parametrize(
    ("task_name", "classes", "options", "files", "drawn"),
    [
        ("multilabel", ["red", "green", "blue"], {}, 1, "#top-classes li"),
        ("regress", ["age"], {}, 1, "#values tr"),
        ("segment", ["background", "cell"], {"decoder_width": 16}, 1, "#legend tr"),
        ("detect", ["cell"], {"pyramid_channels": 64, "score_threshold": 0.0}, 1, "#boxes tr"),
        ("siamese", ["different", "same"], {}, 2, "canvas.image"),
    ],
)
def test_the_page_draws_every_tasks_answer(
    tmp_path, browser, task_name, classes, options, files, drawn
):
    from serve_helpers import image_bytes, running_server

    from torso.tools.serve import ServedModel, create_app

    run = saved_run(tmp_path / task_name, task_name, classes, 64, **options)
    paths = []
    for seed in range(files):
        paths.append(tmp_path / f"image-{seed}.png")
        paths[-1].write_bytes(image_bytes(seed, width=90, height=60))
    expected = torso.load(run).predict(paths)[0]
    problems = []
    with running_server(create_app(ServedModel(run))) as url:
        page = browser.new_page()
        try:
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.goto(url + "/")
            page.wait_for_selector("body[data-ready='1']", timeout=30_000)
            page.set_input_files("#file", [str(path) for path in paths])
            page.wait_for_selector("#answer[data-state='done']", timeout=60_000)
            # One row a class, label, value or box; the two images of a pair.
            count = len(expected["boxes"]) if "boxes" in expected else len(classes)
            assert page.locator(drawn).count() == count
            overlay = page.locator("canvas.overlay").first
            if task_name == "multilabel":
                assert overlay.get_attribute("data-heatmap") == "drawn"
            if task_name == "segment":
                assert overlay.get_attribute("data-mask") == "drawn"
                assert page.evaluate(OVERLAY_PIXELS)[0] > 0.99  # every pixel has a class
            if task_name == "detect":
                assert overlay.get_attribute("data-boxes") == str(len(expected["boxes"]))
            if task_name == "siamese":
                assert page.text_content("#top-class") == expected["prediction"]
            page.screenshot(path=str(tmp_path / f"{task_name}.png"))
        finally:
            page.close()
    assert problems == []
