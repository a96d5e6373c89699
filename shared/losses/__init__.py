"""Losses, one module and one class each (formula and shapes in each docstring)."""
from .contrastive_fusion import ContrastiveFusionLoss, FusionViews, simplex_grid

__all__ = ["ContrastiveFusionLoss", "FusionViews", "simplex_grid"]
