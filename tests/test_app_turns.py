"""Who uses the models next (studio.jobs.base.Turns): a cancelled Generate stops between steps, a cancelled request
stops waiting, and a Generate goes before a waiting batch step."""

from __future__ import annotations

import threading
import time

import gradio as gr
import numpy as np
import pytest

from studio.jobs.base import Turns
from test_app import editor, layer_with_disk


def test_a_cancelled_generate_stops_between_steps(studio):
    """/generate asks between denoising steps whether its request was cancelled or its client left: it stops there
    (16 images x 100 steps kept the model busy for minutes when the client had gone)."""
    asked = []

    def cancelled() -> bool:
        asked.append(1)
        return len(asked) >= 3
    studio.generate.cancelled = cancelled
    mask = np.asarray(studio.generate.prepare(editor([layer_with_disk()]), 0, False)[0])
    with pytest.raises(gr.Error, match="cancelled"):
        studio.generate.generate(mask, "", 16, 100, 3.0, 0, "ddim")
    assert len(asked) == 3, "it stopped at the first step after the cancellation, not after 1600"
    studio.generate.cancelled = lambda: False
    assert len(studio.generate.generate(mask, "", 1, 1, 3.0, 0, "ddim")[1]) == 1  # the models are free again


def test_a_cancelled_request_stops_waiting_for_the_models():
    from studio.jobs.base import Cancelled, Turns

    turns, gone, outcome = Turns(), threading.Event(), []

    def request():
        try:
            with turns.interactive(gone.is_set):
                outcome.append("ran")
        except Cancelled:
            outcome.append("gave up")

    with turns.batch():  # a batch step holds the models
        waiter = threading.Thread(target=request)
        waiter.start()
        time.sleep(0.3)
        gone.set()  # the client leaves while its request waits
        waiter.join(5)
        assert not waiter.is_alive() and outcome == ["gave up"]
    with turns.batch():  # and the batches are not held up by it
        pass


def test_the_next_generate_goes_before_a_waiting_batch_step():
    """After a Generate the batches wait a moment (Turns.grace_s), so that the next Generate in the server's queue
    (started a few milliseconds later) goes first too, not after one more image-batch."""
    from studio.jobs.base import Turns

    turns, order = Turns(grace_s=0.5), []

    def step():
        with turns.batch():
            order.append("batch")

    with turns.interactive():
        batch = threading.Thread(target=step)
        batch.start()
        time.sleep(0.1)
    time.sleep(0.05)  # the next queued request arrives just after the first ended
    with turns.interactive():
        order.append("generate")
    batch.join(5)
    assert order == ["generate", "batch"]


def test_generate_goes_before_the_next_batch_step():
    turns, order = Turns(), []

    def generate():
        with turns.interactive():
            order.append("generate")
            time.sleep(0.05)
            order.append("generate done")

    def next_batch_step():
        with turns.batch():
            order.append("batch")

    with turns.batch():  # a batch step in progress: a Generate, then the next batch step, wait for it
        asked, nxt = threading.Thread(target=generate), threading.Thread(target=next_batch_step)
        asked.start()
        time.sleep(0.05)
        nxt.start()
        time.sleep(0.05)
        assert order == []
    asked.join(5)
    nxt.join(5)
    assert order == ["generate", "generate done", "batch"]
