"""Training side: data pipeline, ViT, training, export, evaluation, registry (uses torch)."""
