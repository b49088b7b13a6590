"""Handcrafted features for DP-SGD: the ScatterNet of Tramer & Boneh (2021).

"Differentially private learning needs better features (or much more data)": a scattering network
(Oyallon & Mallat 2015) is a fixed cascade of wavelet filters and moduli with no parameter learnt from
data, so computing it costs no privacy. A linear model (or a small CNN) trained with DP-SGD on its
coefficients beats end-to-end CNNs at the same epsilon, because the private training then has far fewer
and far better-conditioned coordinates to noise. Their setting, used here: ``J = 2`` scales and ``L = 8``
angles, which turn each channel of an H x W image into 81 channels of (H/4) x (W/4) coefficients
(1 + J L + L^2 J (J - 1) / 2 = 81): MNIST 1 x 28 x 28 -> 81 x 7 x 7, CIFAR-10 3 x 32 x 32 -> 243 x 8 x 8.

Each image's features depend on that image alone, so a client computes them from its own examples and
nothing about them leaves it. ``scatternet_features`` caches them on disk (the data cache of
``flwr_privacy.data``), keyed by the images themselves, so a client computes them once, not every round.

The scattering transform is kymatio's (Andreux et al. 2020), imported from its 2-D PyTorch front end:
``kymatio.torch`` also imports its 3-D transform, which needs ``scipy.special.sph_harm``, gone from
SciPy 1.15.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache

import numpy as np
import torch

from flwr_privacy.data import DataError, TensorData, cache_dir

FEATURES = ("pixels", "scatternet")
SCATTER_J = 2
SCATTER_L = 8
# channels a scattering makes of each input channel: 1 + J L + L^2 J (J - 1) / 2
SCATTER_CHANNELS = 1 + SCATTER_J * SCATTER_L + SCATTER_L**2 * SCATTER_J * (SCATTER_J - 1) // 2


@lru_cache(maxsize=4)
def _scattering(height: int, width: int):
    try:
        from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D
    except ImportError:
        raise DataError("features=scatternet needs the kymatio package (pip install -e '.[experiments]')") from None
    return ScatteringTorch2D(J=SCATTER_J, shape=(height, width), L=SCATTER_L)


def scatter(x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """ScatterNet coefficients (N, C x 81, H/4, W/4) of images ``x`` (N, C, H, W), on ``x``'s device."""
    if x.dim() != 4:
        raise ValueError(f"ScatterNet features need images (N, C, H, W), got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    if h % 2**SCATTER_J or w % 2**SCATTER_J:
        raise ValueError(f"ScatterNet features need sides divisible by {2 ** SCATTER_J}, got {h} x {w}")
    transform = _scattering(h, w).to(x.device)
    with torch.no_grad():
        parts = [transform(x[i : i + batch_size].contiguous()) for i in range(0, n, batch_size)]
    side = 2**SCATTER_J
    out = torch.cat(parts) if parts else torch.empty(0, c, SCATTER_CHANNELS, h // side, w // side)
    return out.reshape(n, c * SCATTER_CHANNELS, h // side, w // side).float()


def _images_key(x: torch.Tensor) -> str:
    digest = hashlib.sha1(f"scatternet-J{SCATTER_J}-L{SCATTER_L}|{tuple(x.shape)}".encode())
    digest.update(x.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:20]


def scatternet_features(data: TensorData) -> TensorData:
    """``data`` with its images replaced by their ScatterNet coefficients, computed once and cached on
    disk (``$FLWR_PRIVACY_CACHE``); the labels are unchanged."""
    path = cache_dir() / f"scatternet-{_images_key(data.x)}.npy"
    if path.exists():
        features = torch.from_numpy(np.load(path))
    else:
        features = scatter(data.x)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, features.numpy())
        os.replace(tmp, path)
    return TensorData(features, data.y)


def with_features(data: TensorData, features: str) -> TensorData:
    """The inputs a model trains on: the images themselves (``pixels``) or their ``scatternet`` features."""
    if features not in FEATURES:
        raise ValueError(f"features={features!r} is unknown; allowed: {list(FEATURES)}")
    return data if features == "pixels" else scatternet_features(data)
