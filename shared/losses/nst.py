"""Neuron selectivity transfer (Huang & Wang, 2017); seed paper equation 5."""
import torch
import torch.nn.functional as F
from torch import nn


class NSTLoss(nn.Module):
    """Squared MMD between the student's and the teacher's neuron activation patterns.

    Each neuron (channel) ``c`` is described by its activation pattern over N positions, L2-normalized:
    ``x_c = f_c / ||f_c||_2``. With the polynomial kernel ``k(x, y) = (x . y)^2``:

        L = mean_{c,c'} k(x_sc, x_sc') + mean_{c,c'} k(x_tc, x_tc') - 2 mean_{c,c'} k(x_sc, x_tc')

    (averaged over the batch for per-sample maps). Same form in the seed paper and RepDistiller.

    Shapes: ``[B, C, *positions]`` feature maps, compared per sample (channel counts may differ, the
    N positions must match); or ``[B, D]`` embeddings, where the D neurons are described by their
    activation pattern over the B samples of the batch (``f^T [D, B]``, one comparison per batch). The
    second form lets student and teacher widths differ (``D_s != D_t``), so no regressor is needed.

    Setting: student = IMU encoder features/embeddings, teacher = frozen CLIP text embeddings
    (detached). The text tower has no positions of its own, hence the samples-as-positions reading
    for ``[B, D]``, which is ours (RepDistiller only handles spatial maps). Zero when
    student == teacher; invariant to rescaling each neuron.
    """

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        teacher = teacher.detach()
        if student.dim() == 2 and teacher.dim() == 2:
            if student.shape[0] != teacher.shape[0]:
                raise ValueError("NSTLoss: batch sizes differ: {} and {}".format(student.shape[0], teacher.shape[0]))
            x_s, x_t = student.t().unsqueeze(0), teacher.t().unsqueeze(0)       # [1, D, B]
        else:
            x_s = student.reshape(student.shape[0], student.shape[1], -1)        # [B, C, N]
            x_t = teacher.reshape(teacher.shape[0], teacher.shape[1], -1)
            if x_s.shape[0] != x_t.shape[0] or x_s.shape[2] != x_t.shape[2]:
                raise ValueError("NSTLoss: feature maps {} and {} differ in batch or positions"
                                 .format(tuple(student.shape), tuple(teacher.shape)))
        x_s, x_t = F.normalize(x_s, dim=2), F.normalize(x_t, dim=2)

        def k(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return (a @ b.transpose(1, 2)).pow(2).mean((1, 2))

        return (k(x_s, x_s) + k(x_t, x_t) - 2 * k(x_s, x_t)).mean()


__all__ = ["NSTLoss"]
