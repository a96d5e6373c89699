"""cosmo-har edge app: stage-2 fine-tuning on the device's few labels (and, later, serving)."""
