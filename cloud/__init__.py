"""cosmo-har cloud app: stage-1 pretraining, quality scoring, (later) the registry daemon."""
