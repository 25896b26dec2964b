"""Siamese-Diffusion Studio: draw or upload a mask, generate image-mask pairs, curate, export, train.

    python app.py                      # http://127.0.0.1:7860 (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT)
    python app.py --model runs/smoke   # another model folder or hub id (default: $SIAMESE_MODEL, else bundled)

The entry point (also of the Hugging Face Space). The app itself is the `studio` package: the page and its
wiring in `studio.page`, every handler a small method of one part of `studio.server.Studio` (a tab, the model
selector) that calls the `siamese` library.
Scripts use the stable API names (gradio_client): `/generate`, `/keep_all`, `/export`, `/train_start`,
`/train_stop`, `/train_status`, `/batch_start`, `/batch_status`, `/batch_stop`, `/batch_move`, `/batch_export`. What
visitors may reach is set by environment variables (studio.settings).
"""

from __future__ import annotations

import argparse
import logging
import signal

from studio.page import build_demo, launch_options

__all__ = ["QUEUE_OPTIONS", "build_demo", "launch_options", "main"]

# One event of each kind at a time (a generation holds the model); at most 64 waiting. The tests launch with it.
QUEUE_OPTIONS = dict(default_concurrency_limit=1, max_size=64)


def main() -> None:
    parser = argparse.ArgumentParser(description="Siamese-Diffusion Studio (Gradio app)")
    parser.add_argument("--model", default=None, help="default model folder or hub id "
                                                      "(default: $SIAMESE_MODEL, else checkpoints/siamese-kvasir-tiny)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    demo = build_demo(args.model)
    demo.studio.preload()
    signal.signal(signal.SIGTERM, _interrupt)  # a stopped container or `kill`: end as Ctrl+C does
    try:
        # server name and port: GRADIO_SERVER_NAME / GRADIO_SERVER_PORT, else 127.0.0.1:7860
        demo.queue(**QUEUE_OPTIONS).launch(**launch_options(demo.studio.settings))
    finally:
        demo.studio.close()  # the visitors' files (studio.scratch) go with the server


def _interrupt(signum, frame) -> None:
    """SIGTERM -> KeyboardInterrupt: Gradio closes the server and `main` removes the visitors' files."""
    raise KeyboardInterrupt


if __name__ == "__main__":
    main()
