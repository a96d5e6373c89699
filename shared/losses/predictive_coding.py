"""Contrastive predictive coding over an encoder's latent sequence (van den Oord et al. 2018; for HAR,
Haresamudram et al., IMWUT 2021)."""
import torch
import torch.nn.functional as F
from torch import nn


class PredictiveCodingLoss(nn.Module):
    """InfoNCE of predicting future latent steps from a GRU context.

    Input ``z [B, S, F]`` (an encoder's latent sequence). A GRU (``hidden`` units) summarizes
    ``z_{<=t}`` into ``c_t [B, S, H]``; for k = 1..K (``K = min(k_steps, S - 1)``) a linear map
    ``W_k`` predicts ``z_{t+k}`` and, for every t < S - k::

        L_k,t = CE over the batch of ( (W_k c_t^(b)) . z_{t+k}^(b') )_{b, b'} with target b' = b

    The loss is the mean over k and t (a scalar). The GRU and the predictors are training-only.
    """

    def __init__(self, features: int, steps: int, hidden: int = 64, k_steps: int = 4) -> None:
        super().__init__()
        self.k_steps = max(1, min(k_steps, steps - 1))
        self.gru = nn.GRU(features, hidden, batch_first=True)
        self.predictors = nn.ModuleList([nn.Linear(hidden, features, bias=False) for _ in range(self.k_steps)])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        c, _ = self.gru(z)  # [B, S, H]
        b, s, _ = z.shape
        target = torch.arange(b, device=z.device)
        losses = []
        for k, w in enumerate(self.predictors, start=1):
            pred = w(c[:, :s - k])  # [B, S-k, F]
            logits = torch.einsum("btf,ctf->tbc", pred, z[:, k:])  # [S-k, B, B]
            losses.append(F.cross_entropy(logits.reshape(-1, b), target.repeat(s - k)))
        return torch.stack(losses).mean()
