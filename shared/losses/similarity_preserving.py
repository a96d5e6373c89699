"""Similarity-preserving KD (Tung & Mori, 2019); seed paper equation 4."""
import torch
import torch.nn.functional as F
from torch import nn


class SimilarityPreservingLoss(nn.Module):
    """Match the row-normalized batch Gram matrices of student and teacher.

        G = f f^T  [B, B]   (f flattened to [B, -1]),   G~[i] = G[i] / ||G[i]||_2
        L = 1/B * sum_i ||G~_s[i] - G~_t[i]||_2^2

    Shapes: ``student [B, D_s]`` (or ``[B, ...]``), ``teacher [B, D_t]`` -> scalar. The widths may
    differ: only the ``B x B`` similarity matrices are compared, so no regressor is needed.

    Setting: student = IMU encoder features or embeddings, teacher = frozen CLIP text embeddings
    (detached).

    Difference: we follow the seed paper's ``1/B`` (its equation 4 sums the per-row squared errors
    over i and divides by B); RepDistiller and Tung & Mori divide the squared Frobenius norm by
    ``B^2``, so our value is B times theirs. Zero when student == teacher, and invariant to rescaling
    either input.
    """

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if student.shape[0] != teacher.shape[0]:
            raise ValueError("SimilarityPreservingLoss: batch sizes differ: {} and {}"
                             .format(student.shape[0], teacher.shape[0]))
        b = student.shape[0]
        f_s, f_t = student.reshape(b, -1), teacher.detach().reshape(b, -1)
        g_s = F.normalize(f_s @ f_s.t(), dim=1)
        g_t = F.normalize(f_t @ f_t.t(), dim=1)
        return (g_s - g_t).pow(2).sum() / b


__all__ = ["SimilarityPreservingLoss"]
