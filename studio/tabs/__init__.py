"""The page's parts, one module each with its widgets, handlers and texts: `model` (the model selector above the
tabs), `generate`, `collection` (Keep, Discard and the zip, in the Generate tab), `train` and `batch`, and
`sampling` (not a tab: the sampling settings Generate and Batch share)."""
