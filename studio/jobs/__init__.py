"""The app's background work: `base` (what every job shares, and who uses the models next), `training` (the
training run) and `batch` (each session's batch and the registry that keeps them)."""
