"""Logit matching (Ba & Caruana, 2014); seed paper equation 12."""
from .fitnets import FitNetsLoss


class LogitsLoss(FitNetsLoss):
    """Mean squared error between student and teacher outputs (pre-softmax).

        L = 1/(B K) * sum_i sum_k (regressor(out_s)[i, k] - out_t[i, k])^2

    Shapes: ``student [B, K]``, ``teacher [B, K]`` -> scalar.

    Setting: as for ``SoftTargetLoss``, the "logits" are the final outputs of the two encoders: the
    IMU embedding in the shared CLIP space (student) and the frozen CLIP text embedding (teacher,
    detached). Pass ``regressor`` if the widths differ. Same form as the seed paper and RepDistiller.
    Zero when student == teacher. The computation is ``FitNetsLoss``'s (MSE after an optional
    regressor); the two differ in what they are applied to (outputs here, features there).
    """


__all__ = ["LogitsLoss"]
