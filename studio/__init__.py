"""Siamese-Diffusion Studio: the Gradio app over the `siamese` library (which never imports gradio).

`app.py` is the entry point; this package holds the app by concern:

- `settings`:   what the operator configures (environment variables) and the app's own folders
- `messages`:   Markdown escaping, and replies that never show server paths
- `masks`:      the drawing canvas, example and random masks, uploaded mask files
- `models`:     which models the server offers (the access policy), loading and caching them
- `generate`:   the Generate tab: canvas -> binary mask -> /generate -> gallery PNGs
- `collection`: Keep, Discard, Remove and the zip export
- `datasets`:   training data and batch masks: folders under the data root, uploaded zips
- `job`:        the background training run and what the page shows of it
- `training`:   the Train tab: /train_start, /train_stop, /train_status and the polling timer
- `batch`:      the Batch tab: many masks -> scored pairs, accepted and rejected, curated and exported
- `batch_job`:  each session's batch in a background thread, kept on the server by the key its page keeps
- `turns`:      who uses the models next: Generate before a batch's next images, batches in turn
- `state`:      `Studio`, the state shared by all sessions, which every handler works on
- `layout`:     the page and its wiring (`build_demo`, `launch_options`)
"""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no calls out
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
