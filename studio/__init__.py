"""Siamese-Diffusion Studio: the Gradio app over the `siamese` library (which never imports gradio).

`app.py` is the entry point; this package holds the app by concern:

- `settings`:   what the operator configures (environment variables) and the app's own folders
- `replies`:    text shown to visitors: Markdown escaping, public names for server paths, one-line errors
- `scratch`:    the server's scratch folder for visitors' files, cleaned at start and exit
- `inputs`:     values sent by visitors, each read once where it enters, with a message naming it
- `masks`:      the drawing canvas, example and random masks, uploaded mask files
- `frames`:     the example frames, and the frames a batch paints its masks into
- `datasets`:   training data and batch masks: folders under the data root, uploaded zips
- `catalog`:    which models the server offers (the access policy, labels, examples), loading them
- `jobs/`:      background work: `base` (shared, and who uses the models next), `training` (a run or a build),
                `batch` (each session's batch, kept by the key its page keeps)
- `server`:     `Studio`, the state shared by all sessions, which every handler works on
- `tabs/`:      the page's parts: `model` (the selector), `sampling` (settings Generate and Batch share),
                `generate`, `collection` (Keep, Discard, export), `train`, `batch`
- `page`:       the page and its wiring (`build_demo`, `launch_options`)
"""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no calls out
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
