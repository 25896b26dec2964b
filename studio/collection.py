"""Curation and export (per browser session): Keep, Discard, Keep all, Remove, and the zip of the kept pairs."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import gradio as gr

from siamese import export_zip

from .generate import PngFolder, Shot, results_view

MAX_COLLECTION = 5000


def _index(selected, items: list) -> int | None:
    """A gallery selection as a valid index; a single item counts as selected."""
    if isinstance(selected, int) and 0 <= selected < len(items):
        return selected
    return 0 if len(items) == 1 else None


class CollectionHandlers:
    """Keep, Discard, Remove, /keep_all and /export; part of `Studio` (uses `self.pngs`).

    The session's results and collection live in gr.State and are passed in and out."""

    pngs: PngFolder

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
        return (results_view(self.pngs, results, show_outline, nxt), results, collection, nxt,
                *self.collection_view(collection))

    def keep_all(self, results: list[Shot], collection: list[Shot], show_outline: bool = False):
        """Move every result into the collection."""
        results, collection = list(results or []), list(collection or [])
        if not results:
            gr.Warning("No results to keep: generate first.")
        if len(collection) + len(results) > MAX_COLLECTION:
            raise gr.Error(f"the collection holds at most {MAX_COLLECTION} pairs: export and remove some first")
        collection += results
        return results_view(self.pngs, [], show_outline), [], collection, None, *self.collection_view(collection)

    def discard(self, results: list[Shot], selected: int | None, show_outline: bool = False):
        """Drop the selected result."""
        results = list(results or [])
        i = _index(selected, results)
        if i is None:
            gr.Warning("Click an image in the results first, then Discard." if results else "No results.")
            return gr.skip(), results, None
        results.pop(i)
        nxt = min(i, len(results) - 1) if results else None
        return results_view(self.pngs, results, show_outline, nxt), results, nxt

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
        label = re.sub(r"[^A-Za-z0-9_-]+", "_", (label or "").strip()) or "lesion"
        folder = Path(tempfile.mkdtemp(prefix="export-", dir=self.pngs.path))
        return str(export_zip(items, folder / f"siamese-pairs-{len(items)}.zip", nnunet=bool(nnunet), label=label))

    def download_ready(self, collection: list[Shot] | None):
        n = len(collection or [])
        return gr.DownloadButton(label=f"Download {n} pair{'s' if n != 1 else ''} (.zip)", interactive=True)
