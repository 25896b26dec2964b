"""Curation and export, in the Generate tab (per browser session): the session's results and kept pairs, Keep,
Discard, Keep all, Remove, and the zip of the kept pairs (/keep_all, /export).

The session's results and collection live in gr.State (lists of `Shot`) and are passed in and out.
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from siamese import Generated

from ..masks import outline
from ..replies import Redactor, refusal
from ..scratch import Scratch

MAX_COLLECTION = 5000


@dataclass
class Shot:
    """A generated pair plus its PNG file (parameters in the PNG text) for the galleries."""

    item: Generated
    png: str
    outlined: str | None = None


def shoot(scratch: Scratch, item: Generated) -> Shot:
    """A generated pair -> a Shot with its PNG written."""
    return Shot(item, scratch.png(item.image, item.params))


def shown(scratch: Scratch, shot: Shot, with_outline: bool) -> str:
    """The PNG a gallery shows: the image, or the image with the mask's outline (written once, when first shown)."""
    if not with_outline:
        return shot.png
    if shot.outlined is None:
        shot.outlined = scratch.png(outline(shot.item.image, shot.item.mask), shot.item.params)
    return shot.outlined


def gallery_items(scratch: Scratch, shots: list[Shot] | None, show_outline: bool = False) -> list[tuple[str, str]]:
    """The results gallery's (file, caption) pairs, with or without the mask outline."""
    return [(shown(scratch, s, bool(show_outline)), f"seed {s.item.seed}") for s in shots or []]


def results_view(scratch: Scratch, shots: list[Shot], show_outline: bool = False, selected: int | None = None):
    return gr.Gallery(value=gallery_items(scratch, shots, show_outline), selected_index=selected)


def select_index(evt: gr.SelectData) -> int:
    """A gallery's click -> the index of the clicked item (kept in a gr.State)."""
    return evt.index


def _index(selected, items: list) -> int | None:
    """A gallery selection as a valid index; a single item counts as selected."""
    if isinstance(selected, int) and not isinstance(selected, bool) and 0 <= selected < len(items):
        return selected
    return 0 if len(items) == 1 else None


class CollectionTab:
    """Keep, Discard, Remove, /keep_all and /export."""

    def __init__(self, scratch: Scratch, redact: Redactor) -> None:
        self.scratch, self.redact = scratch, redact

    def collection_view(self, collection: list[Shot]):
        n = len(collection)
        label = f"Kept pairs: {n}"
        return (gr.Gallery(value=[(s.png, f"#{i + 1} · seed {s.item.seed}") for i, s in enumerate(collection)],
                           label=label, selected_index=None),
                f"**{n}** pair{'s' if n != 1 else ''} kept in this session" + ("" if n else " — nothing yet"),
                gr.DownloadButton(value=None, label="Download zip (prepare it first)", interactive=False))

    def keep(self, results: list[Shot], collection: list[Shot], selected: int | None, show_outline: bool = False):
        """Move the selected result into the collection."""
        results, collection = list(results or []), list(collection or [])
        i = _index(selected, results)
        if i is None:
            gr.Warning("Click an image in the results first, then Keep." if results else "No results to keep.")
            return gr.skip(), results, collection, None, *self.collection_view(collection)
        if len(collection) >= MAX_COLLECTION:
            raise gr.Error(f"the collection holds at most {MAX_COLLECTION} pairs: export and remove some first")
        collection.append(results.pop(i))
        nxt = min(i, len(results) - 1) if results else None  # Keep / Discard again acts on the next image
        return (results_view(self.scratch, results, show_outline, nxt), results, collection, nxt,
                *self.collection_view(collection))

    def keep_all(self, results: list[Shot], collection: list[Shot], show_outline: bool = False):
        """Move every result into the collection."""
        results, collection = list(results or []), list(collection or [])
        if not results:
            gr.Warning("No results to keep: generate first.")
        if len(collection) + len(results) > MAX_COLLECTION:
            raise gr.Error(f"the collection holds at most {MAX_COLLECTION} pairs: export and remove some first")
        collection += results
        return results_view(self.scratch, [], show_outline), [], collection, None, *self.collection_view(collection)

    def discard(self, results: list[Shot], selected: int | None, show_outline: bool = False):
        """Drop the selected result."""
        results = list(results or [])
        i = _index(selected, results)
        if i is None:
            gr.Warning("Click an image in the results first, then Discard." if results else "No results.")
            return gr.skip(), results, None
        results.pop(i)
        nxt = min(i, len(results) - 1) if results else None
        return results_view(self.scratch, results, show_outline, nxt), results, nxt

    def remove(self, collection: list[Shot], selected: int | None):
        """Remove the selected pair from the collection."""
        collection = list(collection or [])
        i = _index(selected, collection)
        if i is None:
            gr.Warning("Click a kept pair first, then Remove." if collection else "The collection is empty.")
            return collection, None, gr.skip(), gr.skip(), gr.skip()
        collection.pop(i)
        return collection, None, *self.collection_view(collection)

    def export(self, collection: list[Shot] | None, nnunet: bool = False, label: str = "lesion"):
        """A zip of the kept pairs: images/, masks/ (0/255), metadata.jsonl, README.txt; nnU-Net v2 as an option."""
        items = [s.item for s in collection or []]
        if not items:
            raise gr.Error("nothing to export: keep at least one generated image first", title="Nothing kept")
        try:
            return self.scratch.export(items, "siamese-pairs", bool(nnunet), label)
        except Exception as e:
            raise refusal(e, self.redact, "the export") from None

    def download_ready(self, collection: list[Shot] | None):
        n = len(collection or [])
        return gr.DownloadButton(label=f"Download {n} pair{'s' if n != 1 else ''} (.zip)", interactive=True)


@dataclass
class CurationButtons:
    keep: gr.Button
    discard: gr.Button
    keep_all: gr.Button


def curation_buttons() -> CurationButtons:
    """Keep, Discard and Keep all, in a row under the results (built by the Generate tab)."""
    with gr.Row():
        keep = gr.Button("✓ Keep", variant="primary", elem_id="keep-btn")
        discard = gr.Button("✗ Discard", elem_id="discard-btn")
        keep_all = gr.Button("Keep all", elem_id="keep-all-btn")
    return CurationButtons(keep, discard, keep_all)


@dataclass
class CollectionWidgets:
    gallery: gr.Gallery
    count: gr.Markdown
    remove: gr.Button
    nnunet: gr.Checkbox
    label: gr.Textbox
    export: gr.Button
    download: gr.DownloadButton


def build() -> CollectionWidgets:
    """The collection under the Generate tab's results."""
    gr.Markdown("### Collection")
    count = gr.Markdown("**0** pairs kept in this session — nothing yet", elem_id="count", label="Count")
    gallery = gr.Gallery(label="Kept pairs: 0", columns=8, height=240, format="png", object_fit="contain",
                         elem_id="collection", interactive=False, fit_columns=False)
    with gr.Row():
        remove = gr.Button("Remove selected", size="sm")
        nnunet = gr.Checkbox(False, label="Also the nnU-Net v2 layout (imagesTr/, labelsTr/, dataset.json)")
        label = gr.Textbox("lesion", label="Label name (nnU-Net)", max_lines=1)
        export = gr.Button("Prepare zip", variant="primary", elem_id="export-btn")
        download = gr.DownloadButton("Download zip (prepare it first)", interactive=False, elem_id="download-btn")
    return CollectionWidgets(gallery, count, remove, nnunet, label, export, download)


def wire(tab: CollectionTab, w: CollectionWidgets, buttons: CurationButtons, results_gallery: gr.Gallery,
         results: gr.State, collection: gr.State, results_sel: gr.State, coll_sel: gr.State,
         show_outline: gr.Checkbox) -> None:
    """Keep, Keep all, Discard (on the session's results), Remove and the export (on its collection); the gr.State
    arguments are the session's results, its collection and the selected item of each."""
    w.gallery.select(select_index, None, coll_sel, api_visibility="private")
    outputs = [w.gallery, w.count, w.download]
    keep_outputs = [results_gallery, results, collection, results_sel, *outputs]
    buttons.keep.click(tab.keep, [results, collection, results_sel, show_outline], keep_outputs, api_name="keep")
    buttons.keep_all.click(tab.keep_all, [results, collection, show_outline], keep_outputs, api_name="keep_all")
    buttons.discard.click(tab.discard, [results, results_sel, show_outline],
                          [results_gallery, results, results_sel], api_name="discard")
    w.remove.click(tab.remove, [collection, coll_sel], [collection, coll_sel, *outputs], api_name="remove")
    w.export.click(tab.export, [collection, w.nnunet, w.label], w.download, api_name="export").success(
        tab.download_ready, collection, w.download, api_visibility="private")
