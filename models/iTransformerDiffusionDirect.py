"""iTransformerDiffusionDirect: x0-prediction on the normalised target itself.

Same backbone, denoiser and sampling path as ``iTransformerDiffusion``; the differences are
what is diffused (normalize(y), not the residual), the default parameterisation (x0) and the
default clamp of the predicted x0 (±3 in normalised units).
"""

from __future__ import annotations

from models import iTransformerDiffusion
from models.iTransformerDiffusion import ARCH_ARGS  # noqa: F401  (the registry reads it)


class Model(iTransformerDiffusion.Model):
    residual = False
    default_parameterization = "x0"
    default_clip_x0 = 3.0
