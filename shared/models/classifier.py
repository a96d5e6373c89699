"""Cosmo stage-2 classifier: quality-guided attention over modalities, fusion, GRU, MLP."""
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..errors import ConfigError


class QualityGuidedAttention(nn.Module):
    """Modality weights from the features and from data quality.

    For each modality j with flattened feature ``z_j [B, D_j]``::

        mu_j      = tanh(W_j z_j + b_j)                       (W_j: D_j x D_j)
        beta_Attn = softmax_j( mu_j . z_j / sqrt(D_j) )
        beta_QoM  = q / sum(q)                                (q: quality scores, fixed)
        beta      = normalize((1 - lambda) beta_Attn + lambda beta_QoM)

    The ``1/sqrt(D_j)`` scale is ours (the paper has none): with D_j in the hundreds the raw dot
    products saturate the softmax at initialization. ``present [B, M]`` (bool) drops missing
    modalities: their beta is zeroed and the rest renormalized.

    Returns ``beta [B, M]`` (rows sum to 1) and ``beta_attn [B, M]``.
    """

    def __init__(self, feature_dims: Sequence[int], quality: Optional[Sequence[float]] = None,
                 lam: float = 0.8) -> None:
        super().__init__()
        m = len(feature_dims)
        if not 0.0 <= lam <= 1.0:
            raise ConfigError("lambda must be in [0, 1], got {}".format(lam))
        self.lam = float(lam)
        self.proj = nn.ModuleList([nn.Linear(d, d) for d in feature_dims])
        q = torch.ones(m) if quality is None else torch.as_tensor([float(v) for v in quality])
        if q.shape != (m,) or (q < 0).any() or float(q.sum()) <= 0:
            raise ConfigError("quality must be {} non-negative scores with a positive sum, got {}".format(
                m, list(quality) if quality is not None else None))
        self.register_buffer("beta_qom", q / q.sum())

    def forward(self, zs: List[torch.Tensor], present: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        scores = []
        for z, lin in zip(zs, self.proj):
            mu = torch.tanh(lin(z))
            scores.append((mu * z).sum(1) / (z.shape[1] ** 0.5))
        s = torch.stack(scores, 1)  # [B, M]
        if present is not None:
            s = s.masked_fill(~present, float("-inf"))
        beta_attn = torch.softmax(s, dim=1)
        qom = self.beta_qom.unsqueeze(0).expand_as(beta_attn)
        if present is not None:
            qom = qom * present.to(qom.dtype)
        beta = (1.0 - self.lam) * beta_attn + self.lam * qom
        beta = beta / beta.sum(1, keepdim=True).clamp(min=1e-12)
        return beta, beta_attn


class CosmoClassifier(nn.Module):
    """Attention-weighted fusion of encoder feature maps, then a GRU over steps and an MLP.

    Inputs: per modality a feature map ``h_j [B, S, F_j]`` (all with the same S).
    ``fusion="sum"``: ``v = sum_j beta_j h_j`` (needs equal F_j) -> ``[B, S, F]``;
    ``fusion="concat"``: ``v = [beta_1 h_1, ..., beta_M h_M]`` -> ``[B, S, sum F_j]``.
    Returns ``(logits [B, K], beta [B, M])``.
    """

    def __init__(self, steps: int, features: Sequence[int], num_classes: int,
                 quality: Optional[Sequence[float]] = None, lam: float = 0.8, fusion: str = "sum",
                 gru_hidden: int = 64, mlp_hidden: int = 64, dropout: float = 0.2) -> None:
        super().__init__()
        if fusion not in ("sum", "concat"):
            raise ConfigError("fusion must be 'sum' or 'concat', got {!r}".format(fusion))
        if fusion == "sum" and len(set(features)) != 1:
            raise ConfigError("fusion 'sum' needs equal feature widths, got {}; use 'concat'".format(list(features)))
        self.fusion, self.steps, self.features = fusion, steps, list(features)
        self.attention = QualityGuidedAttention([steps * f for f in features], quality, lam)
        width = features[0] if fusion == "sum" else sum(features)
        self.gru = nn.GRU(width, gru_hidden, batch_first=True)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(gru_hidden, mlp_hidden), nn.ReLU(inplace=True),
                                  nn.Dropout(dropout), nn.Linear(mlp_hidden, num_classes))

    def forward(self, hs: List[torch.Tensor], present: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        logits, beta, _ = self.forward_with_embedding(hs, present)
        return logits, beta

    def forward_with_embedding(self, hs: List[torch.Tensor], present: Optional[torch.Tensor] = None
                               ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(logits [B, K], beta [B, M], embedding [B, gru_hidden])``; the embedding is the GRU's last
        hidden state over the attention-fused map, i.e. the feature the MLP head classifies."""
        beta, _ = self.attention([h.flatten(1) for h in hs], present)
        weighted = [h * beta[:, j, None, None] for j, h in enumerate(hs)]
        if self.fusion == "sum":
            v = torch.stack(weighted, 0).sum(0)
        else:
            v = torch.cat(weighted, dim=2)
        _, last = self.gru(v)
        emb = last[-1]
        return self.head(emb), beta, emb


class CosmoModel(nn.Module):
    """Encoders (one per modality, in order) + ``CosmoClassifier``; what stage 2 trains and ships.

    ``forward(xs)`` with ``xs`` a list of ``[B, T_j, C_j]`` windows returns ``(logits, beta)``.
    """

    def __init__(self, encoders: Sequence[nn.Module], classifier: CosmoClassifier,
                 modalities: Sequence[str]) -> None:
        super().__init__()
        self.modalities = list(modalities)
        self.encoders = nn.ModuleList(encoders)
        self.classifier = classifier

    def forward(self, xs: List[torch.Tensor], present: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        hs = [enc(x) for enc, x in zip(self.encoders, xs)]
        return self.classifier(hs, present)

    def forward_with_embedding(self, xs: List[torch.Tensor], present: Optional[torch.Tensor] = None
                               ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(logits, beta, embedding)``: ``forward`` plus the fused embedding (GRU last hidden state)."""
        hs = [enc(x) for enc, x in zip(self.encoders, xs)]
        return self.classifier.forward_with_embedding(hs, present)
