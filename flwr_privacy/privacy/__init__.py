"""Privacy mechanisms: clipping, noise, the sparse vector technique, accounting."""

from flwr_privacy.privacy.clipping import clip_by_l2_norm, clip_by_value
from flwr_privacy.privacy.noise import (
    gaussian_mechanism,
    gaussian_noise,
    gaussian_sigma,
    laplace_mechanism,
    laplace_noise,
    release_laplace,
)
from flwr_privacy.privacy.svt import (
    SVTResult,
    SVTScales,
    budget_split,
    guaranteed_epsilon,
    svt_above_threshold,
    svt_dssgd,
)

__all__ = [
    "SVTResult",
    "SVTScales",
    "budget_split",
    "clip_by_l2_norm",
    "clip_by_value",
    "gaussian_mechanism",
    "gaussian_noise",
    "gaussian_sigma",
    "guaranteed_epsilon",
    "laplace_mechanism",
    "laplace_noise",
    "release_laplace",
    "svt_above_threshold",
    "svt_dssgd",
]
