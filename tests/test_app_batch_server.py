"""The Batch tab in the launched app: through gradio_client (a reload finds the batch, other sessions' Generate
answers while it runs, the documented values) and one browser run. All slow."""

from __future__ import annotations

import json
import threading
import time
import zipfile
from pathlib import Path

import pytest

import app
from conftest import free_port
from studio.settings import Settings
from batch_helpers import FakeScorer, fake_loader, mask_png, masks_zip


# -- the launched app, through gradio_client ----------------------------------------------------------
@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    """The app on a free port with the tiny model and a fake scorer, queued as `python app.py` queues it."""
    root = tmp_path_factory.mktemp("batch-server")
    demo = app.build_demo(str(tiny_model_dir), runs_dir=root / "runs", checkpoints_dir=root / "checkpoints",
                          settings=Settings(data_root=tmp_path_factory.getbasetemp()))
    demo.studio.models.load_scorer = fake_loader(FakeScorer())
    port = free_port()
    demo.queue(**app.QUEUE_OPTIONS).launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True,
                                           quiet=True, **app.launch_options())
    try:
        yield f"http://127.0.0.1:{port}/", demo
    finally:
        demo.studio.batches.stop_all(60)
        demo.close()


def client(url: str, tmp_path: Path, name: str):
    from gradio_client import Client

    return Client(url, verbose=False, download_files=str(tmp_path / name))


def wait_batch(c, key: str, timeout: float = 120) -> dict:
    deadline = time.time() + timeout
    while (st := c.predict(batch_key=key, api_name="/batch_status"))["state"] in ("running", "stopping"):
        assert time.time() < deadline, st["message"]
        time.sleep(0.3)
    return st


@pytest.mark.slow
def test_a_batch_through_the_api_survives_a_reload(server, tmp_path):
    pytest.importorskip("gradio_client")
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    url, demo = server
    a = client(url, tmp_path, "a")
    status, key = a.predict(mask_files=[handle_file(masks_zip(tmp_path / "masks.zip"))], num_images=2,
                            min_fidelity=0.5, steps=2, scheduler="ddim", seed=11, api_name="/batch_start")
    assert "0 / 6" in status and str(tmp_path) not in status
    st = wait_batch(a, key)
    assert (st["state"], st["done"], st["accepted"], st["rejected"]) == ("finished", 6, 3, 3)
    rejected = [p["id"] for p in st["pairs"] if not p["accepted"]]
    assert "4** accepted" in a.predict(batch_key=key, pair=rejected[0], api_name="/batch_move")
    with pytest.raises(AppError, match="pair #99 is not in this batch"):
        a.predict(batch_key=key, pair=99, api_name="/batch_move")

    # a reload: a new page (a new Gradio session) with the key the browser kept finds the batch as it was
    b = client(url, tmp_path, "b")
    again = b.predict(batch_key=key, api_name="/batch_status")
    assert (again["state"], again["accepted"], again["rejected"]) == ("finished", 4, 2)
    assert [p["moved"] for p in again["pairs"]] == [p["id"] == rejected[0] for p in st["pairs"]]
    path = b.predict(batch_key=key, nnunet=True, label="polyp", api_name="/batch_export")
    with zipfile.ZipFile(path) as zf:
        meta = [json.loads(line) for line in zf.read("metadata.jsonl").decode().splitlines()]
        assert len([n for n in zf.namelist() if n.startswith("images/")]) == 4 and "nnunet/dataset.json" in zf.namelist()
    assert sorted(m["fidelity"] for m in meta) == [0.2, 0.9, 0.9, 0.9]
    assert [m["curation"] for m in meta].count("moved by hand") == 1
    # another session without the key sees no batch, and cannot export one
    c = client(url, tmp_path, "c")
    assert c.predict(batch_key="", api_name="/batch_status")["state"] == "idle"
    with pytest.raises(AppError, match="nothing to export"):
        c.predict(batch_key="", api_name="/batch_export")
    with pytest.raises(AppError, match="min fidelity must be between 0 and 1"):  # the slider's range, for the API too
        c.predict(mask_files=[handle_file(str(tmp_path / "masks.zip"))], min_fidelity=2, api_name="/batch_start")
    with pytest.raises(AppError, match="must be inside the server's data folder"):
        c.predict(data_folder="/etc", api_name="/batch_start")


@pytest.mark.slow
def test_another_sessions_generate_answers_while_a_batch_runs(server, tmp_path):
    """A long batch (10 masks x 4 images x 40 steps) in one session; another session's /generate is answered
    within seconds, while the batch still runs (it waits for at most one image-batch: studio.jobs.base.Turns)."""
    pytest.importorskip("gradio_client")
    from gradio_client import handle_file

    url, demo = server
    a, b = client(url, tmp_path, "a"), client(url, tmp_path, "b")
    zipped = masks_zip(tmp_path / "masks.zip", n=10)
    _, key = a.predict(mask_files=[handle_file(zipped)], num_images=4, steps=40, scheduler="ddim", seed=1,
                       api_name="/batch_start")
    try:
        while a.predict(batch_key=key, api_name="/batch_status")["done"] < 4:  # the batch is under way
            time.sleep(0.2)
        mask = tmp_path / "mask.png"
        mask.write_bytes(mask_png(1))
        waits = []
        for seed in (1, 2):
            t0 = time.monotonic()
            gallery, status = b.predict(mask=handle_file(str(mask)), num_images=1, steps=2, seed=seed,
                                        scheduler="ddim", api_name="/generate")
            waits.append(time.monotonic() - t0)
            assert len(gallery) == 1 and "1 images" in status
        st = a.predict(batch_key=key, api_name="/batch_status")
        assert st["state"] == "running" and st["done"] < st["total"] == 40, "the batch ended before Generate answered"
        assert max(waits) < 10, waits
        print(f"\nGenerate answered in {', '.join(f'{w:.2f}' for w in waits)} s during a batch "
              f"({st['s_per_pair']:.2f} s per pair)")
    finally:
        a.predict(batch_key=key, api_name="/batch_stop")
    st = wait_batch(a, key)
    assert st["state"] == "stopped" and st["done"] == len(st["pairs"]) > 0


@pytest.mark.slow
def test_documented_batch_values_work_through_the_api(server, tmp_path):
    """`min_fidelity=None` means no threshold and a negative seed a random one, as the API page says (the components
    answered "Could not preprocess input component" and "Value -1 is less than minimum value 0")."""
    pytest.importorskip("gradio_client")
    from gradio_client import handle_file

    url, _ = server
    a = client(url, tmp_path, "a")
    status, key = a.predict(mask_files=[handle_file(masks_zip(tmp_path / "masks.zip", n=2))], num_images=2,
                            min_fidelity=None, seed=-1, steps=2, scheduler="ddim", api_name="/batch_start")
    st = wait_batch(a, key)
    assert (st["state"], st["done"], st["accepted"]) == ("finished", 4, 4), st["message"]
    assert st["min_fidelity"] is None and all(p["fidelity"] is not None for p in st["pairs"])  # scored, all kept
    assert "min fidelity" not in st["message"]


@pytest.mark.slow
def test_eight_sessions_generate_during_a_batch(server, tmp_path):
    """8 clients, each 3 x /generate (1 image, 2 steps), while another session's 40-pair batch runs: every Generate is
    answered before the batch ends (the interactive path first), and the median wait is printed for
    docs/RELIABILITY.md."""
    pytest.importorskip("gradio_client")
    from gradio_client import handle_file

    url, demo = server
    owner = client(url, tmp_path, "owner")
    _, key = owner.predict(mask_files=[handle_file(masks_zip(tmp_path / "masks.zip", n=10))], num_images=4,
                           steps=30, scheduler="ddim", seed=1, api_name="/batch_start")
    mask = tmp_path / "mask.png"
    mask.write_bytes(mask_png(3))
    waits: list[float] = []

    def session(k: int) -> None:
        c = client(url, tmp_path, f"s{k}")
        try:
            for r in range(3):
                t0 = time.monotonic()
                c.predict(mask=handle_file(str(mask)), num_images=1, steps=2, seed=100 * k + r, scheduler="ddim",
                          api_name="/generate")
                waits.append(time.monotonic() - t0)
        finally:
            c.close()

    try:
        while owner.predict(batch_key=key, api_name="/batch_status")["done"] < 4:  # the batch is under way
            time.sleep(0.2)
        t0 = time.monotonic()
        threads = [threading.Thread(target=session, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        took = time.monotonic() - t0
        st = owner.predict(batch_key=key, api_name="/batch_status")
    finally:
        owner.predict(batch_key=key, api_name="/batch_stop")
    waits.sort()
    print(f"\n{len(waits)} Generate requests from 8 clients during a 40-pair batch, in {took:.1f} s: wait median "
          f"{waits[len(waits) // 2]:.2f} s, longest {waits[-1]:.2f} s; the batch made {st['done']} pairs meanwhile "
          f"(grace {demo.studio.turns.grace_s:g} s)")
    assert len(waits) == 24
    assert st["state"] == "running" and st["done"] < st["total"] == 40, "the batch ended before the sessions"


# -- in a browser (Playwright + Debian's chromium, headless; skipped without them) ----------------------
CHROMIUM = "/usr/bin/chromium"


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no browser at {CHROMIUM} (apt-get install chromium)")
def test_the_batch_tab_runs_a_zip_and_a_reload_shows_it_again(server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    from test_app_browser import ARGS, queue_joins

    url, _ = server
    zipped = masks_zip(tmp_path / "masks.zip")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(url, wait_until="load")
            page.get_by_role("tab", name="Batch").click()
            page.locator("#batch-files input[type=file]").set_input_files(zipped)
            page.wait_for_timeout(1000)
            page.get_by_role("button", name="Sampling (as in Generate)").click()
            page.locator("#batch-steps input[type=number]").fill("2")
            page.locator("#batch-start").click()
            page.wait_for_function("() => /Finished|failed/.test(document.querySelector('#batch-status').innerText)",
                                   timeout=120_000, polling=500)
            assert "6 / 6" in page.locator("#batch-status").inner_text()
            page.wait_for_function("() => document.querySelectorAll('#batch-rejected img').length === 3",
                                   timeout=10_000)
            assert page.locator("#batch-accepted img").count() == 3
            page.locator("#batch-rejected img").first.click()  # moves it over
            page.wait_for_function("() => document.querySelectorAll('#batch-accepted img').length === 4",
                                   timeout=10_000)
            page.wait_for_timeout(1000)
            joins = queue_joins(page)
            page.wait_for_timeout(3500)
            assert joins == [], f"the page polled after the batch ended: {joins}"

            page.reload(wait_until="load")  # the batch lives on the server; the page keeps its key
            page.get_by_role("tab", name="Batch").click()
            page.wait_for_function("() => /4\\*{0,2} accepted/.test(document.querySelector('#batch-status').innerText)",
                                   timeout=20_000, polling=500)
            assert page.locator("#batch-accepted img").count() == 4 and page.locator("#batch-rejected img").count() == 2
        finally:
            browser.close()
