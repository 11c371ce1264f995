"""The model store (shared by the service, training/export and training/evaluate; no torch)."""
