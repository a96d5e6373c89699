"""Projection heads: flattened encoder features -> D-dim L2-normalized vectors (Cosmo ``r_j``)."""
import torch
import torch.nn.functional as F
from torch import nn


class ProjectionHead(nn.Module):
    """``Linear(in, hidden) -> BN -> ReLU -> Linear(hidden, out_dim)`` then L2 normalization.

    The Cosmo reference uses hidden = 1280 and out_dim = D = 128.
    """

    def __init__(self, in_dim: int, out_dim: int = 128, hidden: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, out_dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``z [B, in_dim]`` (or any ``[B, ...]``, flattened) -> ``[B, out_dim]`` with unit L2 norm."""
        return F.normalize(self.net(z.flatten(1)), dim=1)
