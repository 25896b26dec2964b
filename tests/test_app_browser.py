"""End to end in a real browser (Playwright + Debian's chromium, headless): draw, generate, keep, export, unzip.

Skipped when /usr/bin/chromium is absent (`apt-get install chromium`). With SIAMESE_APP_SCREENSHOTS=1 it also
writes the README screenshots to docs/screenshots/ with the bundled model (or $SIAMESE_MODEL, or runs/smoke).
"""

from __future__ import annotations

import io
import json
import os
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import app
from conftest import free_port
from siamese import default_model
from studio.catalog import is_model_folder
from studio.frames import example_frames
from studio.settings import ROOT, RUNS_DIR, Settings

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                 reason=f"no browser at {CHROMIUM}: install Debian's chromium (apt-get install chromium)")]
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")


def launch(model: str, root: Path, data_root: Path | None = None) -> tuple[object, str]:
    demo = app.build_demo(model, runs_dir=root / "runs", checkpoints_dir=root / "checkpoints",
                          settings=Settings(data_root=data_root or root))
    port = free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                        **app.launch_options())
    return demo, f"http://127.0.0.1:{port}/"


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    """The app with conftest's tiny 64 px model; its data folder holds every test's tmp_path."""
    demo, url = launch(str(tiny_model_dir), tmp_path_factory.mktemp("browser"), tmp_path_factory.getbasetemp())
    yield url
    demo.close()


def draw_stroke(page, fraction=(0.35, 0.45), length=0.25) -> None:
    """Pick the Brush (a stroke draws nothing before), then drag across the canvas."""
    editor = page.locator("#mask-editor")
    editor.get_by_role("button", name="Brush", exact=True).click()
    box = editor.locator("canvas").first.bounding_box()
    x, y = box["x"] + box["width"] * fraction[0], box["y"] + box["height"] * fraction[1]
    page.mouse.move(x, y)
    page.mouse.down()
    for i in range(1, 6):  # few events: every move redraws the (software-rendered) WebGL canvas
        page.mouse.move(x + box["width"] * length * i / 5, y + 4 * (i % 2))
    page.mouse.up()


def open_app(browser, url):
    page = browser.new_page(viewport={"width": 1400, "height": 1100}, accept_downloads=True)
    outside: list[str] = []
    page.on("request", lambda r: outside.append(r.url)
            if not r.url.startswith(("http://127.0.0.1", "data:", "blob:")) else None)
    page.goto(url, wait_until="load")
    page.wait_for_selector("#mask-editor canvas", timeout=60_000)
    return page, outside


def test_draw_generate_keep_export_unzip(browser, server, tmp_path):
    page, outside = open_app(browser, server)
    draw_stroke(page)
    page.locator("#generate-btn").click()
    page.wait_for_selector("#results img", timeout=120_000)
    page.wait_for_selector("#mask-preview img", timeout=10_000)

    page.locator("#results img").first.click()
    page.locator("#keep-btn").click()
    page.wait_for_selector("#collection img", timeout=30_000)
    assert "1 pair kept" in page.locator("#count").inner_text()

    page.get_by_label("Also the nnU-Net v2 layout (imagesTr/, labelsTr/, dataset.json)").check()
    page.locator("#export-btn").click()
    page.wait_for_function("() => !document.querySelector('#download-btn').disabled", timeout=30_000)
    with page.expect_download(timeout=30_000) as info:
        page.locator("#download-btn").click()
    path = tmp_path / "pairs.zip"
    info.value.save_as(path)

    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        images = sorted(n for n in names if n.startswith("images/"))
        assert len(images) == 1 and {"metadata.jsonl", "README.txt", "nnunet/dataset.json"} <= set(names)
        image = Image.open(io.BytesIO(zf.read(images[0])))
        mask = np.asarray(Image.open(io.BytesIO(zf.read(images[0].replace("images/", "masks/")))))
        assert image.size == (64, 64) and mask.shape == (64, 64)
        assert set(np.unique(mask)) == {0, 255}
        assert 0.005 < (mask > 0).mean() < 0.3, "the drawn stroke, not the whole canvas"
        ys, xs = np.nonzero(mask)
        assert 0.25 < xs.mean() / 64 < 0.65 and 0.3 < ys.mean() / 64 < 0.6, "where the stroke was drawn"
        meta = json.loads(zf.read("metadata.jsonl"))
        assert meta["image"] == images[0] and meta["scheduler"] == "dpm++" and meta["steps"] == 16
        assert f"nnunet/labelsTr/{Path(images[0]).stem}.png" in names
    assert outside == [], f"the page called out: {outside}"
    page.close()


def test_paint_into_an_example_frame_keeps_the_frame_and_the_union_mask(browser, server, tmp_path):
    """Issue 24: an example frame (with its mask) loads under the canvas; a stroke over it, Generate: the result is
    the frame with the new lesion, the kept pair's mask the union of the stroke and the frame's own lesion."""
    page, outside = open_app(browser, server)
    page.locator("#example-frames img").first.click()
    page.wait_for_selector("#frame img", timeout=30_000)
    page.wait_for_selector("#frame-mask img", timeout=30_000)
    page.wait_for_timeout(1500)  # the frame becomes the canvas' backdrop
    shot = np.asarray(Image.open(io.BytesIO(page.locator("#mask-editor canvas").first.screenshot())).convert("RGB"))
    assert shot.mean() > 40 and shot[..., 0].mean() > shot[..., 2].mean() + 10, "the (reddish) frame is the backdrop"
    assert page.locator("#paint-frame input").is_checked()
    draw_stroke(page, fraction=(0.35, 0.55), length=0.2)
    page.locator("#generate-btn").click()
    page.wait_for_selector("#results img", timeout=120_000)
    page.wait_for_function("() => document.querySelector('#generate-status').innerText.includes('painted into')",
                           timeout=30_000)
    assert "masks: the new lesion and the frame's own" in page.locator("#generate-status").inner_text()
    page.screenshot(path=str(tmp_path / "frame-mode.png"), full_page=True)
    page.locator("#results img").first.click()
    page.locator("#keep-btn").click()
    page.wait_for_selector("#collection img", timeout=30_000)
    page.locator("#export-btn").click()
    page.wait_for_function("() => !document.querySelector('#download-btn').disabled", timeout=30_000)
    with page.expect_download(timeout=30_000) as info:
        page.locator("#download-btn").click()
    info.value.save_as(tmp_path / "pairs.zip")
    with zipfile.ZipFile(tmp_path / "pairs.zip") as zf:
        name = next(n for n in zf.namelist() if n.startswith("masks/"))
        mask = np.asarray(Image.open(io.BytesIO(zf.read(name)))) > 0
        meta = json.loads(zf.read("metadata.jsonl").decode().splitlines()[-1])
    own = Image.open(example_frames(ROOT / "assets" / "frames")[0][1])  # the pair is at the frame's own size
    own = np.asarray(own.resize(mask.shape[::-1], Image.NEAREST)) > 0
    assert meta["frame_mask"] == "known" and (mask & own).sum() >= 0.9 * own.sum(), "the frame's lesion is in the mask"
    assert mask.sum() > own.sum() * 1.2, "and the drawn one too"
    assert outside == [], f"the page called out: {outside}"
    page.close()


def queue_joins(page) -> list[str]:
    """Every event the page sends to the server from now on (each poll is one)."""
    joins: list[str] = []
    page.on("request", lambda r: joins.append(r.url) if r.method == "POST" and "queue/join" in r.url else None)
    return joins


def test_the_page_polls_only_while_a_run_is_active(browser, server, dataset, tmp_path_factory):
    """No polling on an idle page; Start switches polling on (the run is followed to its end), the end off."""
    page, _ = open_app(browser, server)
    page.get_by_role("tab", name="Train").click()  # where the timer lives (a tab's content mounts when opened)
    page.wait_for_timeout(3000)  # the page's load events
    joins = queue_joins(page)
    page.wait_for_timeout(4000)  # the old timer ticked every 1.5 s
    assert joins == [], f"an idle page polled the server: {joins}"

    page.get_by_label("Dataset folder on the server").fill(str(dataset.relative_to(tmp_path_factory.getbasetemp())))
    page.get_by_label("Steps", exact=True).fill("2")
    page.get_by_label("UNet pre-training steps (from scratch)").fill("1")
    page.get_by_label("Batch size").fill("2")
    page.get_by_label("Resolution").click()
    page.get_by_role("option", name="64", exact=True).click()
    page.get_by_label("Checkpoint every").fill("1")
    page.get_by_label("Preview every (0: never)").fill("0")
    page.get_by_label("Run name (saved in runs/app/NAME)").fill("browser-run")
    page.get_by_role("button", name="Start training").click()
    page.wait_for_function("() => /Finished|failed/.test(document.querySelector('#train-status').innerText)",
                           timeout=150_000, polling=500)
    status = page.locator("#train-status").inner_text()
    assert "Finished at step 3" in status and "runs/app/browser-run" in status, status
    page.wait_for_timeout(1000)
    joins.clear()
    page.wait_for_timeout(4000)
    assert joins == [], f"the page kept polling after the run ended: {joins}"
    page.close()


def best_model() -> str:
    """For screenshots: $SIAMESE_MODEL or the bundled model, else the newest run trained in the app."""
    model = os.environ.get("SIAMESE_MODEL") or default_model()
    if is_model_folder(Path(model)):
        return model
    runs = sorted((p for p in RUNS_DIR.glob("*") if is_model_folder(p)), key=lambda p: p.stat().st_mtime)
    if not runs:
        pytest.skip("no trained model for the screenshots (the bundled one, $SIAMESE_MODEL or runs/app/*)")
    return str(runs[-1])


@pytest.mark.skipif(not os.environ.get("SIAMESE_APP_SCREENSHOTS"), reason="set SIAMESE_APP_SCREENSHOTS=1 to "
                    "write docs/screenshots/ (slow: a real model on CPU)")
def test_screenshots(browser, tmp_path):
    out = ROOT / "docs" / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    data = os.environ.get("SIAMESE_APP_SCREENSHOT_DATA") or str(ROOT.parent / "shared" / "data" / "kvasir-seg")
    demo, url = launch(best_model(), tmp_path, Path(data).resolve().parent)
    started = time.time()
    try:
        page, _ = open_app(browser, url)
        page.set_viewport_size({"width": 1400, "height": 1300})
        page.wait_for_timeout(2000)
        # Generate: an example mask plus a stroke, four images, keep two, outlines on
        page.locator(".compact-gallery img").nth(4).click()
        page.wait_for_timeout(1500)
        draw_stroke(page, fraction=(0.62, 0.72), length=0.1)
        page.locator("#generate-btn").click()
        page.wait_for_selector("#results img", timeout=600_000)
        page.locator("#results img").first.click()
        page.locator("#keep-btn").click()
        page.wait_for_selector("#collection img", timeout=30_000)
        page.locator("#keep-btn").click()
        page.wait_for_function("() => document.querySelector('#count').innerText.includes('2 pairs')")
        page.get_by_label("Draw the mask outline over the results").check()
        page.wait_for_timeout(2500)
        page.screenshot(path=str(out / "generate.png"), full_page=True)
        # Train: a short run at 64 px with live curves and previews
        page.get_by_role("tab", name="Train").click()
        page.get_by_label("Dataset folder on the server").fill(data)
        page.get_by_label("Steps", exact=True).fill("60")
        page.get_by_label("Resolution").click()
        page.get_by_role("option", name="64", exact=True).click()
        page.get_by_label("Checkpoint every").fill("30")
        page.get_by_label("Preview every (0: never)").fill("20")
        page.get_by_label("Run name (saved in runs/app/NAME)").fill("screenshot-run")
        page.get_by_role("button", name="Start training").click()
        page.wait_for_function("() => /Finished|failed/.test(document.querySelector('#train-status').innerText)",
                               timeout=900_000, polling=2000)
        assert "Finished" in page.locator("#train-status").inner_text()  # the run the screenshot shows went through
        page.wait_for_timeout(2500)
        page.screenshot(path=str(out / "train.png"), full_page=True)
        # Batch: the example masks, two images each, scored and curated at the default threshold
        page.get_by_role("tab", name="Batch").click()
        page.locator("#batch-files input[type=file]").set_input_files(sorted(str(p) for p in
                                                                             (ROOT / "assets" / "masks").glob("*.png")))
        page.wait_for_timeout(1500)
        page.locator("#batch-start").click()
        page.wait_for_function("() => /Finished|failed/.test(document.querySelector('#batch-status').innerText)",
                               timeout=900_000, polling=2000)
        assert "Finished" in page.locator("#batch-status").inner_text()
        page.wait_for_timeout(2500)
        page.screenshot(path=str(out / "batch.png"), full_page=True)
        page.close()
        for name in ("generate", "train", "batch"):  # each screenshot is this run's, and shows a page
            shot = np.asarray(Image.open(out / f"{name}.png").convert("L"))
            assert (out / f"{name}.png").stat().st_mtime >= started and shot.shape[1] >= 1400 and shot.std() > 10
    finally:
        demo.studio.job.stop()
        demo.studio.job.wait(120)
        demo.close()
