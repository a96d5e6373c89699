"""Losses, one module and one class each (formula and shapes in each docstring)."""
from .activation_boundaries import ActivationBoundariesLoss
from .attention_transfer import AttentionTransferLoss
from .contrastive_fusion import ContrastiveFusionLoss, FusionViews, simplex_grid
from .correlation_congruence import CorrelationCongruenceLoss
from .distillation import DISTILLATION_LOSSES, CombinedAlignmentLoss, build_distillation_loss
from .fitnets import FitNetsLoss
from .info_nce import SymmetricInfoNCE
from .logits import LogitsLoss
from .nst import NSTLoss
from .pkt import PKTLoss
from .predictive_coding import PredictiveCodingLoss
from .rkd import RKDLoss
from .similarity_preserving import SimilarityPreservingLoss
from .soft_target import SoftTargetLoss
from .triplet import TripletLoss

__all__ = [
    "ActivationBoundariesLoss", "AttentionTransferLoss", "CombinedAlignmentLoss", "ContrastiveFusionLoss",
    "CorrelationCongruenceLoss", "DISTILLATION_LOSSES", "FitNetsLoss", "FusionViews", "LogitsLoss", "NSTLoss",
    "PKTLoss", "PredictiveCodingLoss", "RKDLoss", "SimilarityPreservingLoss", "SoftTargetLoss", "SymmetricInfoNCE", "TripletLoss",
    "build_distillation_loss", "simplex_grid",
]
