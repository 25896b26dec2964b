"""The model selector above the tabs: the models this server offers (`studio.catalog`), the selected model's
description, and its recommended mask strength, mask steps and autoguidance sent to Generate's sliders (the Batch
tab presets its own the same way: `sampling.preset`)."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import gradio as gr

from siamese import ModelLoadError
from siamese.sampling import describe_mask

from ..catalog import ModelCatalog, ModelStore
from ..replies import md_escape
from ..settings import Settings
from . import sampling

logger = logging.getLogger(__name__)


def model_help(settings: Settings) -> str:
    """The model selector's help: what this server lets a visitor load."""
    typed = (["models/NAME (a folder of the server's models folder)"] if settings.models_root else []) + (
        ["a Hugging Face hub id (owner/name)"] if settings.allow_hub else [])
    return "The default model, the bundled ones and the runs trained here" + (
        "; or type " + " or ".join(typed) if typed else "")


def model_summary(model) -> str:
    """The selected model in one Markdown line: name, size, prompt, recommended settings, weights, origin."""
    ident = model.identity()
    prompt = model.config.prompt or "(empty)"
    guide = ""
    if model.guide is not None:
        guide = (f" · recommended autoguidance {model.config.autoguidance:g}" if model.config.autoguidance != 1
                 else " · has a guide for autoguidance (off by default)")
    return (f"**{ident['name'] or 'model'}** · {model.config.resolution}×{model.config.resolution} px · "
            f"default prompt: *{prompt}* · recommended mask strength "
            f"{describe_mask(model.config.control_scale, model.config.control_end)}{guide} · "
            f"weights `{ident['fingerprint']}` · from `{ident['source']}`")


class ModelSelector:
    """The model selector's handlers."""

    def __init__(self, catalog: ModelCatalog, models: ModelStore) -> None:
        self.catalog, self.models = catalog, models

    def model_choices(self) -> list[tuple[str, str]]:
        return self.catalog.choices()

    def refresh_models(self, model: str | None = None):
        """The model selector with a fresh list of folders (the selection kept)."""
        return gr.Dropdown(choices=self.model_choices(), value=model or self.catalog.default_id)

    def model_info(self, model: str | None):
        """Load the selected model: its description and its recommended mask strength, mask steps and
        autoguidance for the sliders (autoguidance 1 and locked without a guide); a clear message (not a crash,
        the sliders left alone) when it cannot load."""
        try:
            m = self.models.get(model)
        except ModelLoadError as e:
            gr.Warning(str(e), title="Model not loaded")
            return f"⚠️ {md_escape(str(e))}", gr.Slider(), gr.Slider(), gr.Slider()
        return (model_summary(m), *sampling.preset(m))

    def preload(self) -> None:
        """Load the default model in the background so the first generation starts at once."""
        def work():
            try:
                self.models.get(self.catalog.default)
            except Exception as e:  # noqa: BLE001 - reported when the model is used
                logger.warning("default model not loaded: %s", e)
        threading.Thread(target=work, name="siamese-preload", daemon=True).start()


@dataclass
class SelectorWidgets:
    model: gr.Dropdown
    refresh: gr.Button
    summary: gr.Markdown


def build(selector: ModelSelector, settings: Settings) -> SelectorWidgets:
    """The selector's row and the model's description (above the tabs)."""
    with gr.Row():
        model = gr.Dropdown(selector.model_choices(), value=selector.catalog.default_id, label="Model",
                            allow_custom_value=True, info=model_help(settings), scale=4)
        refresh = gr.Button("Refresh list", size="sm", scale=0, min_width=110)
    summary = gr.Markdown("Loading the model...", label="Model")
    return SelectorWidgets(model, refresh, summary)


def wire(demo: gr.Blocks, selector: ModelSelector, widgets: SelectorWidgets, sliders: list) -> None:
    """On load and on every change: the model's description and Generate's `sliders` (mask strength, mask steps,
    autoguidance)."""
    outputs = [widgets.summary, *sliders]
    demo.load(selector.model_info, widgets.model, outputs, api_visibility="private")
    widgets.model.change(selector.model_info, widgets.model, outputs, api_visibility="private")
    widgets.refresh.click(selector.refresh_models, widgets.model, widgets.model, api_visibility="private")
