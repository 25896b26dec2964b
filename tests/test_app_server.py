"""The launched app through gradio_client: /generate, /keep_all, /export, and a 2-step run via /train_*; then 8
sessions at once during a training run (each answered, each exporting only its own pairs); then what a hostile or
careless client sends (mask files, documented values, a cancelled request, a gone client) and a SIGTERM.

The tiny model and the synthetic dataset come from conftest.py. Every test here starts a server: all are slow.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from PIL import Image

import app
from conftest import free_port, write_dataset
from siamese.objective import LOSS_KEYS
from studio.catalog import is_model_folder
from studio.settings import Settings
from studio.tabs.train import BASE_MODELS

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    """The app on a free port with conftest's tiny 64 px model, queued as `python app.py` queues it; yields (url,
    root folder). Its data folder holds every test's tmp_path (conftest's `dataset`)."""
    root = tmp_path_factory.mktemp("server")
    demo = app.build_demo(str(tiny_model_dir), runs_dir=root / "runs", checkpoints_dir=root / "checkpoints",
                          settings=Settings(data_root=tmp_path_factory.getbasetemp()))
    port = free_port()
    demo.queue(**app.QUEUE_OPTIONS).launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True,
                                           quiet=True, **app.launch_options())
    try:
        yield f"http://127.0.0.1:{port}/", root, demo
    finally:
        demo.studio.job.stop()
        demo.studio.job.wait(60)
        demo.close()


@pytest.fixture(scope="module")
def client(server):
    return Client(server[0], verbose=False)


@pytest.fixture()
def mask_file(tmp_path) -> str:
    mask = np.zeros((128, 128), np.uint8)
    cv2.ellipse(mask, (64, 60), (30, 22), 0, 0, 360, 255, -1)
    cv2.imwrite(str(tmp_path / "mask.png"), mask)
    return str(tmp_path / "mask.png")


def _path(value) -> str:
    return value["image"] if isinstance(value, dict) and "image" in value else value


def test_generate_keep_all_and_export_through_the_api(client, mask_file, tmp_path):
    gallery, status = client.predict(mask=handle_file(mask_file), prompt="", num_images=2, steps=2,
                                     guidance_scale=3.0, seed=5, scheduler="ddim", api_name="/generate")
    assert len(gallery) == 2 and "2 images" in status
    png = Image.open(_path(gallery[1]))
    assert png.format == "PNG" and "Seed: 6" in png.text["parameters"] and "Sampler: ddim" in png.text["parameters"]

    client.predict(api_name="/keep_all")
    path = client.predict(nnunet=True, label="polyp", api_name="/export")
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        assert sorted(n for n in names if n.startswith("images/")) == ["images/00000_seed5.png",
                                                                       "images/00001_seed6.png"]
        assert {"masks/00000_seed5.png", "metadata.jsonl", "README.txt", "nnunet/dataset.json"} <= set(names)
        meta = [json.loads(x) for x in zf.read("metadata.jsonl").decode().splitlines()]
        assert [m["seed"] for m in meta] == [5, 6] and meta[0]["steps"] == 2 and meta[0]["resolution"] == 64


def test_bad_input_is_a_message_not_a_crash(client, tmp_path):
    empty = tmp_path / "empty.png"
    cv2.imwrite(str(empty), np.zeros((32, 32), np.uint8))
    with pytest.raises(AppError, match="empty"):
        client.predict(mask=handle_file(str(empty)), api_name="/generate")
    with pytest.raises(AppError, match="nothing to export"):
        Client(client.src, verbose=False).predict(nnunet=False, api_name="/export")  # a fresh session
    (tmp_path / "data" / "images").mkdir(parents=True)
    with pytest.raises(AppError, match="no masks/ folder"):
        client.predict(data_folder=str(tmp_path / "data"), api_name="/train_start")
    status = client.predict(api_name="/train_status")
    assert status["state"] == "idle" and "No training run yet" in status["message"]


def test_the_api_reaches_only_what_the_server_offers(client, mask_file, tiny_model_dir):
    """No model outside the offered ones, no dataset outside the data folder, and no server path in the replies."""
    for model in ("/etc", str(tiny_model_dir.parent), "someone/model"):
        with pytest.raises(AppError, match="not a model this server offers") as info:
            client.predict(mask=handle_file(mask_file), num_images=1, steps=1, model=model, api_name="/generate")
        assert str(tiny_model_dir.parent) not in str(info.value)
    for folder in ("/etc", "/root", "../..", "/no/such/folder"):
        with pytest.raises(AppError, match="must be inside the server's data folder"):
            client.predict(data_folder=folder, api_name="/train_start")


def test_a_short_training_run_is_polled_and_usable_at_once(client, server, mask_file, dataset):
    data = dataset  # conftest: 6 synthetic pairs at 80 px
    text = client.predict(data_folder=str(data), base_model=BASE_MODELS[0], max_steps=2, batch_size=2,
                          lr=1e-4, resolution=64, checkpoint_every=1, preview_every=2, name="api-run",
                          base_steps=1, api_name="/train_start")
    assert "6 image-mask pairs" in text and str(data.parent) not in text and str(server[1]) not in text
    with pytest.raises(AppError, match="already in progress"):
        client.predict(data_folder=str(data), api_name="/train_start")
    deadline = time.time() + 150
    while (status := client.predict(api_name="/train_status"))["state"] in ("running", "stopping"):
        assert time.time() < deadline, status
        time.sleep(1)
    assert status["state"] == "finished" and status["step"] == 3, status  # 1 pre-training step + 2
    assert status["message"].startswith("✅ Finished at step 3")
    assert [row["step"] for row in status["losses"]] == [1, 2, 3]
    assert all(set(LOSS_KEYS) <= set(row) for row in status["losses"])
    assert status["losses"][0]["loss_mask"] == 0 and status["losses"][1]["loss_mask"] > 0  # stage 1: UNet alone
    assert status["output"] == "runs/app/api-run"  # the run's model id, not its server folder
    run = server[1] / "runs" / "api-run"
    assert is_model_folder(run) and (run / "metrics.csv").is_file() and list((run / "previews").glob("*.png"))
    # the finished run generates at once
    gallery, _ = client.predict(mask=handle_file(mask_file), num_images=1, steps=2, seed=1, model=status["output"],
                                api_name="/generate")
    assert len(gallery) == 1
    # Stop after the run: the status again, and a warning (a toast, not part of the reply) that nothing runs
    job = client.submit(api_name="/train_stop")
    assert job.result().startswith("✅ Finished at step 3")
    assert _warnings(job) == ["No training run is in progress."]


def _warnings(job) -> list[str]:
    """The gr.Warning texts a finished job's server sent (gradio_client keeps them in its status updates)."""
    texts = []
    while True:
        try:
            update = job.communicator.updates.get_nowait()
        except asyncio.QueueEmpty:
            return texts
        if getattr(update, "log", None):
            texts.append(update.log[0])


# -- many sessions at once, during a training run
CLIENTS, ROUNDS = 8, 3  # each client: ROUNDS x (/generate of 1 or 2 images, /keep_all), then /export
REQUESTS = CLIENTS * (2 * ROUNDS + 1)  # 56
REPLY_S = 60  # the longest one request may take to be answered, its time in the queue included
DEADLINE_S = 90  # for all the sessions together, on an idle machine: both grow with the time of one session alone
SERIAL_FACTOR = 2  # the sessions together may take this many times as long as the same sessions one after another
TRAIN_STEPS = 30  # about twice as long as the sessions take here, so they run during it


def _session(url: str, k: int, mask: str, downloads, log: list, reply_s: float = REPLY_S) -> tuple[list[int], str]:
    """One browser session (its own Client: its own session hash, so its own gr.State): ROUNDS generations at
    seeds only it uses, each kept, then the export. Returns its seeds and the zip's path; logs each request's
    (sent, answered) times."""
    client = Client(url, verbose=False, download_files=str(downloads))

    def call(**kwargs):
        sent = time.monotonic()
        result = client.submit(**kwargs).result(timeout=reply_s)
        log.append((sent, time.monotonic()))
        return result

    try:
        seeds = []
        for r in range(ROUNDS):
            n, base = 1 + (k + r) % 2, 1000 * (k + 1) + 10 * r
            gallery, status = call(mask=handle_file(mask), prompt="", num_images=n, steps=2, guidance_scale=3.0,
                                   seed=base, scheduler="ddim", api_name="/generate")
            assert len(gallery) == n and f"seeds {base}–{base + n - 1}" in status, (k, status)
            seeds += range(base, base + n)
            kept = call(api_name="/keep_all")[2]  # (results, collection, count, download button)
            assert kept.startswith(f"**{len(seeds)}** pair"), (k, kept)
        return seeds, call(nnunet=False, label="lesion", api_name="/export")
    finally:
        client.close()


def test_eight_sessions_generate_keep_and_export_while_training(client, server, tmp_path):
    """8 clients at once, each 3 x (/generate, /keep_all) then /export (56 requests), while a 30-step run trains:
    every request is answered in time, each session exports exactly its own pairs, and the run finishes."""
    url = server[0]
    data = write_dataset(tmp_path / "data", n=4, size=64)
    masks = []
    for k in range(CLIENTS):  # a mask of its own for each session: the lesion moves right with k
        mask = np.zeros((128, 128), np.uint8)
        cv2.ellipse(mask, (28 + 10 * k, 64), (18, 26), 0, 0, 360, 255, -1)
        cv2.imwrite(str(tmp_path / f"mask{k}.png"), mask)
        masks.append(str(tmp_path / f"mask{k}.png"))
    # the machine's speed now (a shared CI machine may be busy): one session alone, before the run starts; the
    # limits are the idle machine's or, when it is slower now, SERIAL_FACTOR x the sessions run one by one
    alone = time.monotonic()
    _session(url, CLIENTS, masks[0], tmp_path / "alone", [])
    alone = time.monotonic() - alone
    deadline = max(DEADLINE_S, SERIAL_FACTOR * CLIENTS * alone)
    reply_s = max(REPLY_S, deadline * REPLY_S / DEADLINE_S)
    client.predict(data_folder=str(data), base_model=BASE_MODELS[0], max_steps=TRAIN_STEPS, batch_size=2, lr=1e-4,
                   resolution=64, checkpoint_every=TRAIN_STEPS, preview_every=0, name="concurrent-run", base_steps=0,
                   api_name="/train_start")
    t0 = time.monotonic()
    polls: list[tuple[float, str, int]] = []  # /train_status meanwhile, from a session of its own

    def watch():
        watcher = Client(url, verbose=False)
        try:
            while time.monotonic() - t0 < deadline + 30:
                s = watcher.submit(api_name="/train_status").result(timeout=reply_s)
                polls.append((time.monotonic(), s["state"], s["step"]))
                if s["state"] not in ("running", "stopping"):
                    return
                time.sleep(0.5)
        finally:
            watcher.close()

    watching = threading.Thread(target=watch, daemon=True)
    watching.start()
    log: list[tuple[float, float]] = []
    pool = ThreadPoolExecutor(CLIENTS)
    try:
        futures = [pool.submit(_session, url, k, masks[k], tmp_path / f"downloads{k}", log, reply_s)
                   for k in range(CLIENTS)]
        sessions = [f.result(timeout=max(1.0, t0 + deadline - time.monotonic())) for f in futures]
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    assert len(log) == REQUESTS
    watching.join(deadline + 30)

    # the run finished, and the sessions ran during it: most requests were answered before it ended
    assert polls and polls[-1][1:] == ("finished", TRAIN_STEPS), polls[-1:]
    ended = min(t for t, state, _ in polls if state == "finished")
    during = sum(answered < ended for _, answered in log)
    assert during >= REQUESTS // 2, f"{during} of {REQUESTS} requests answered during training"
    assert is_model_folder(server[1] / "runs" / "concurrent-run")

    # each export holds its session's pairs only: its seeds in order, and its mask in every pair
    centres = []
    for k, (seeds, path) in enumerate(sessions):
        with zipfile.ZipFile(path) as zf:
            meta = [json.loads(line) for line in zf.read("metadata.jsonl").decode().splitlines()]
            assert [m["seed"] for m in meta] == seeds, (k, [m["seed"] for m in meta])
            assert sorted(n for n in zf.namelist() if n.startswith("images/")) == [
                f"images/{i:05d}_seed{s}.png" for i, s in enumerate(seeds)]
            pair_masks = [cv2.imdecode(np.frombuffer(zf.read(n), np.uint8), cv2.IMREAD_GRAYSCALE)
                          for n in sorted(zf.namelist()) if n.startswith("masks/")]
        assert len(pair_masks) == len(seeds) and all(np.array_equal(m, pair_masks[0]) for m in pair_masks), k
        centres.append(float(np.nonzero(pair_masks[0])[1].mean()))
    assert all(a < b for a, b in zip(centres, centres[1:])), centres  # session k's mask, not another's
    waits = sorted(answered - sent for sent, answered in log)
    print(f"\n{REQUESTS} requests in {max(a for _, a in log) - t0:.1f} s, {during} during training (ended at "
          f"{ended - t0:.1f} s); waits median {waits[len(waits) // 2]:.2f} s, longest {waits[-1]:.2f} s")


# -- what a hostile or careless client sends ----------------------------------------------------------------
def one_clean_line(message: str) -> None:
    """No second line, no server or temporary path, no bare OS error."""
    assert "\n" not in message.strip() and "/tmp" not in message and str(ROOT) not in message, message
    assert str(Path.cwd()) not in message and "Errno" not in message and "Traceback" not in message, message


def raw_call(url: str, api_name: str, data: list) -> dict:
    """A request as any HTTP client may send it (no gradio_client in between): the final event's data."""
    event = httpx.post(f"{url}gradio_api/call/{api_name}", json={"data": data}, timeout=30).json()["event_id"]
    text = httpx.get(f"{url}gradio_api/call/{api_name}/{event}", timeout=120).text
    kind, data_line = [line for line in text.splitlines() if line.startswith(("event:", "data:"))][-2:]
    return {"event": kind.split(":", 1)[1].strip(), "data": json.loads(data_line.split(":", 1)[1])}


def test_mask_files_follow_the_one_rule_and_the_size_limit_through_the_api(client, tmp_path):
    """/generate reads the mask file itself: a 16-bit mask at its own depth, an RGBA mask by its alpha, a huge one
    refused from its header (no decode), an undecodable one in one line."""
    lesion = np.zeros((64, 64), np.uint16)
    lesion[16:40, 20:44] = 30000
    cv2.imwrite(str(tmp_path / "dim16.png"), lesion)  # 30000 of 65535: below half, no lesion
    with pytest.raises(AppError, match="dim16.png: the mask is empty") as info:
        client.predict(mask=handle_file(str(tmp_path / "dim16.png")), num_images=1, steps=1, api_name="/generate")
    one_clean_line(str(info.value))
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[16:40, 20:44, 3] = 255  # only the alpha channel marks the lesion
    cv2.imwrite(str(tmp_path / "alpha.png"), rgba)
    gallery, status = client.predict(mask=handle_file(str(tmp_path / "alpha.png")), num_images=1, steps=1,
                                     api_name="/generate")
    assert len(gallery) == 1 and "1 images" in status
    Image.new("1", (9000, 9000)).save(tmp_path / "huge.png")  # 81 million pixels in about 10 KB
    t0 = time.monotonic()
    with pytest.raises(AppError, match="huge.png: the image is 9000x9000 pixels, too large") as info:
        client.predict(mask=handle_file(str(tmp_path / "huge.png")), num_images=1, steps=1, api_name="/generate")
    one_clean_line(str(info.value))
    assert time.monotonic() - t0 < 10
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(AppError, match="broken.png: not a readable image") as info:
        client.predict(mask=handle_file(str(tmp_path / "broken.png")), num_images=1, steps=1, api_name="/generate")
    one_clean_line(str(info.value))


# /generate's last parameters, in order: cache_interval, precision, frame, frame_mask, paint_into_frame, margin,
# clear_frame_lesions (a raw call sends every parameter)
SPEED_AND_FRAME = [1, "float32", None, None, True, 8, False]


def test_files_not_uploaded_are_refused_in_one_line(server):
    """A FileData naming a server file, with or without its meta, or a file:// URL: one line, no working directory;
    the image is never read (a meta-less path reached the image component, which read any image on the server)."""
    url = server[0]
    args = ["", 1, 1, 3.0, 0, "ddim", None, False, None, None, None, *SPEED_AND_FRAME]
    example = str(ROOT / "assets" / "masks" / "round.png")
    for mask in ({"path": "file:///etc/passwd", "meta": {"_type": "gradio.FileData"}},
                 {"path": example, "meta": {"_type": "gradio.FileData"}}, {"path": example}, {"path": "/etc/passwd"}):
        reply = raw_call(url, "generate", [mask, *args])
        assert reply["event"] == "error", (mask, reply)
        message = reply["data"]["error"]
        assert "not uploaded to this server" in message, (mask, message)
        one_clean_line(message)


def test_documented_values_work(client, mask_file):
    """`seed` below 0 means random, as the API page says (the seed component answered "Value -1 is less than
    minimum value 0")."""
    seeds = set()
    for _ in range(2):
        _, status = client.predict(mask=handle_file(mask_file), num_images=1, steps=1, seed=-1, api_name="/generate")
        seeds.add(status.split("seeds ")[1].split("–")[0])
    assert len(seeds) == 2, "two random seeds"
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/generate"]
    assert any(p["parameter_name"] == "seed" for p in api["parameters"])


def _generate_in_background(url: str, mask: dict, session: str, fn_index: int):
    """/generate of 16 images x 100 steps, joined as the page joins the queue; returns the open event stream once
    the server has started it."""
    data = [mask, "", 16, 100, 3.0, 0, "ddim", None, False, None, None, None, *SPEED_AND_FRAME]
    httpx.post(f"{url}gradio_api/queue/join", json={"data": data, "fn_index": fn_index, "session_hash": session,
                                                    "event_data": None, "trigger_id": None}, timeout=30)
    stream = httpx.stream("GET", f"{url}gradio_api/queue/data", params={"session_hash": session}, timeout=60)
    response = stream.__enter__()
    for line in response.iter_lines():
        if "process_starts" in line:
            return stream
    raise AssertionError("the request never started")


def test_a_cancelled_or_abandoned_generate_frees_the_models(server, client, mask_file):
    """16 images x 100 steps (about 16 s here), cancelled after 2 s, then again with the client gone: another
    visitor's 1-step request is answered at once (0.3 to 0.6 s here; 9 to 14 s when the abandoned generation went
    on, and 191 s with a real model)."""
    url, _, demo = server
    fn_index = next(i for i, fn in demo.fns.items() if fn.api_name == "generate")
    other = Client(url, verbose=False)
    waits = []
    try:
        for how in ("cancel", "disconnect"):
            if how == "cancel":
                job = client.submit(mask=handle_file(mask_file), num_images=16, steps=100, seed=1,
                                    scheduler="ddim", api_name="/generate")
                deadline = time.time() + 30
                while job.status().code.name not in ("PROCESSING", "PROGRESS"):
                    assert time.time() < deadline
                    time.sleep(0.1)
                time.sleep(2)
                job.cancel()
            else:
                uploaded = httpx.post(f"{url}gradio_api/upload", files={"files": open(mask_file, "rb")}).json()[0]
                mask = {"path": uploaded, "orig_name": "mask.png", "meta": {"_type": "gradio.FileData"}}
                stream = _generate_in_background(url, mask, uuid.uuid4().hex, fn_index)
                time.sleep(2)
                stream.__exit__(None, None, None)  # the page closed: its connection is gone
            t0 = time.monotonic()
            gallery, _ = other.predict(mask=handle_file(mask_file), num_images=1, steps=1, seed=2,
                                       api_name="/generate")
            waits.append(time.monotonic() - t0)
            assert len(gallery) == 1
    finally:
        other.close()
    assert max(waits) < 5, f"another visitor waited {waits} s: the abandoned generation went on"
    print(f"\nafter a cancelled and an abandoned /generate, the next one answered in "
          f"{', '.join(f'{w:.2f}' for w in waits)} s")


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_sigterm_removes_the_visitors_files_and_a_new_server_those_of_a_killed_one(tiny_model_dir, tmp_path):
    """`python app.py` under SIGTERM (a stopped container) ends as Ctrl+C does and removes its scratch folder (the
    visitors' PNGs, zips and unpacked uploads); at start it removes the scratch folders of servers that were
    killed."""
    tmp = tmp_path / "tmp"
    stale = tmp / "siamese-app-killed"
    stale.mkdir(parents=True)
    (stale / "server.pid").write_text(str(_dead_pid()))
    (stale / "visitor.png").write_bytes(b"a visitor's file")
    port = free_port()
    env = {**os.environ, "TMPDIR": str(tmp), "SIAMESE_MODEL": str(tiny_model_dir), "GRADIO_SERVER_PORT": str(port),
           "SIAMESE_DATA_ROOT": str(tmp_path), "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    with open(tmp_path / "server.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 180
        while True:
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "server.log").read_text()[-2000:]
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        assert not stale.exists(), "a killed server's scratch folder is removed at start"
        ours = list(tmp.glob("siamese-app-*"))
        assert len(ours) == 1 and (ours[0] / "server.pid").read_text() == str(proc.pid)
        c = Client(url, verbose=False, download_files=str(tmp_path / "downloads"))
        mask = tmp_path / "mask.png"
        cv2.imwrite(str(mask), cv2.circle(np.zeros((64, 64), np.uint8), (32, 32), 12, 255, -1))
        c.predict(mask=handle_file(str(mask)), num_images=1, steps=1, api_name="/generate")
        c.close()
        assert list(ours[0].glob("*.png")), "the gallery PNG is in the scratch folder"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert not list(tmp.glob("siamese-app-*")), (tmp_path / "server.log").read_text()[-2000:]
