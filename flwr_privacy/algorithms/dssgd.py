"""Distributed Selective SGD, DSSGD (Shokri & Shmatikov, "Privacy-Preserving Deep Learning", CCS 2015).

Section names below are the paper's. Each participant, in each epoch (here: each Flower round),
runs the five steps of "Local training":

1. download a theta_d fraction of the global parameters, the most often updated, and overwrite
   the local copies (`download_indices`, `overwrite_local`);
2. run local SGD (``flwr_privacy.training``; not here);
3. compute the change Delta w of every parameter (`compute_change`);
4. select at most c = ceil(theta_u |w|) changes to upload (`num_upload`): the largest
   (`select_largest`) or a random sample of those above tau (`select_random_above_threshold`);
   with DP, the sparse vector technique selects instead (``flwr_privacy.privacy.svt``);
5. clip the selected values into [-gamma, gamma] (`clip_selected`) and upload them.

The "Parameter server" (`DSSGDServer`) adds each uploaded value to its parameter, counts
the updates per parameter (stat_j), optionally decays the counters (stat := beta * stat), and
serves downloads ranked by counter.

Everything works on flat 1-D float tensors: a model's parameters flattened in one fixed order
(``flwr_privacy.wire``).

Round order in Flower. The paper's participants upload asynchronously, each whenever it finishes
an epoch. A Flower round is synchronous: every sampled client downloads from the same global state
at the start of the round, trains, and uploads; the server then applies the uploads one after
another in a fixed order (sorted by client id / partition id), decays the counters when the round
number calls for it, and serves the next round's download. A fixed order makes a seeded run
deterministic; the paper's round-robin exchange protocol is this order with one client per round.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from flwr_privacy.compression.base import PayloadError
from flwr_privacy.compression.topk import select_topk
from flwr_privacy.privacy.clipping import clip_by_value
from flwr_privacy.privacy.svt import VARIANTS as SVT_VARIANTS
from flwr_privacy.privacy.svt import budget_split, guaranteed_epsilon, svt_above_threshold, svt_dssgd

SELECTIONS = ("largest", "random_threshold")

# Uploaded values may exceed gamma by this relative amount: a value clipped to gamma and then sent
# as float16 can round up by up to 2^-11 of itself.
GAMMA_TOLERANCE = 1e-3


def _invalid(key: str, value: object, allowed: str) -> ValueError:
    return ValueError(f"DSSGDConfig.{key}={value!r} is invalid: must be {allowed}")


@dataclass(frozen=True)
class DSSGDConfig:
    """DSSGD's hyper-parameters; epsilon is per participant per round, not per parameter.

    theta_u, theta_d: fractions of the parameters uploaded and downloaded per round; gamma: the
    clipping bound of uploaded values; tau: the threshold of "random with threshold" and of the SVT;
    selection: the upload rule without DP ("largest" or "random_threshold"); with dp=True the SVT
    variant `svt_variant` selects instead; counter_decay (beta) multiplies the server's update
    counters every `decay_every` rounds (1 = no decay).
    """

    theta_u: float = 0.1
    theta_d: float = 1.0
    gamma: float = 0.001
    tau: float = 0.0001
    selection: str = "largest"
    dp: bool = False
    epsilon: float = 1.0
    svt_variant: str = "proven"
    counter_decay: float = 1.0
    decay_every: int = 1
    insecure_seeded_noise: bool = False

    def __post_init__(self) -> None:
        for key in ("theta_u", "theta_d", "counter_decay"):
            value = getattr(self, key)
            if not _is_real(value) or not 0 < value <= 1:
                raise _invalid(key, value, "a number in (0, 1]")
        if not _is_real(self.gamma) or not 0 < self.gamma < math.inf:
            raise _invalid("gamma", self.gamma, "a finite number > 0")
        if not _is_real(self.tau) or not 0 <= self.tau < math.inf:
            raise _invalid("tau", self.tau, "a finite number >= 0")
        if self.selection not in SELECTIONS:
            raise _invalid("selection", self.selection, f"one of {SELECTIONS}")
        for key in ("dp", "insecure_seeded_noise"):
            if not isinstance(getattr(self, key), bool):
                raise _invalid(key, getattr(self, key), "True or False")
        if not _is_real(self.epsilon) or not 0 < self.epsilon < math.inf:
            raise _invalid("epsilon", self.epsilon, "a finite number > 0")
        if self.svt_variant not in SVT_VARIANTS:
            raise _invalid("svt_variant", self.svt_variant, f"one of {SVT_VARIANTS}")
        every = self.decay_every
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise _invalid("decay_every", self.decay_every, "an int >= 1")


def _is_real(value: object) -> bool:
    # bool is an int in Python, but `theta_u=True` is a mistake, not 1.0.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Upload:
    """A participant's upload: parameter indices (ascending, int64), their values, and its privacy cost.

    Without DP both epsilons are ``math.inf``: the values are released in the clear.
    """

    indices: torch.Tensor
    values: torch.Tensor
    epsilon_claimed: float
    epsilon_guaranteed: float


def _fraction_count(fraction: float, n: int) -> int:
    """ceil(fraction * n) clamped to [1, n]; a product within float error of an integer is that integer."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"number of parameters must be an int >= 1, got {n!r}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    product = fraction * n
    count = round(product) if math.isclose(product, round(product)) else math.ceil(product)
    return min(n, max(1, count))


def num_upload(theta_u: float, n: int) -> int:
    """c = ceil(theta_u * |w|), at least 1: the most values uploaded per round (step 4)."""
    return _fraction_count(theta_u, n)


def _flat(name: str, x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 1 or not x.is_floating_point():
        raise ValueError(f"{name} must be a 1-D floating-point tensor")


def download_indices(stats: torch.Tensor, theta_d: float) -> torch.Tensor:
    """Step 1, server side: indices (ascending) of the ceil(theta_d |w|) largest stat_j, ties to lower j."""
    _flat("stats", stats)
    n = stats.numel()
    count = _fraction_count(theta_d, n)
    if count == n:
        return torch.arange(n, device=stats.device)
    # A stable descending sort keeps equal counters in index order, so ties go to the lower index.
    ranked = torch.sort(stats, descending=True, stable=True).indices
    return torch.sort(ranked[:count]).values


def overwrite_local(
    local_flat: torch.Tensor, indices: torch.Tensor, values: torch.Tensor
) -> torch.Tensor:
    """Step 1: a copy of the local parameters with the downloaded values written over their entries."""
    _flat("local parameters", local_flat)
    if indices.shape != values.shape or indices.dim() != 1:
        shapes = f"indices {tuple(indices.shape)} and values {tuple(values.shape)}"
        raise ValueError(f"{shapes} must be 1-D of equal length")
    updated = local_flat.detach().clone()
    updated[indices.to(updated.device)] = values.to(updated.device, updated.dtype)
    return updated


def compute_change(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """Step 3: Delta w = w_after_local_sgd - w_before, for every parameter."""
    _flat("before", before)
    _flat("after", after)
    if before.shape != after.shape:
        raise ValueError(f"before {tuple(before.shape)} and after {tuple(after.shape)} differ in shape")
    return after.detach() - before.detach()


def select_largest(delta: torch.Tensor, k: int) -> torch.Tensor:
    """Step 4, "largest values" rule: indices (ascending) of the k largest |Delta w_j|."""
    _flat("delta", delta)
    indices, _ = select_topk(delta, k)
    return torch.sort(indices).values


def select_random_above_threshold(
    delta: torch.Tensor, k: int, tau: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Step 4, "random with threshold": k indices (ascending) among |Delta w_j| > tau, fewer if fewer pass."""
    _flat("delta", delta)
    candidates = torch.nonzero(delta.detach().abs() > tau).flatten()
    chosen = torch.randperm(candidates.numel(), generator=generator)[: max(k, 0)]
    return torch.sort(candidates[chosen.to(candidates.device)]).values


def clip_selected(values: torch.Tensor, gamma: float) -> torch.Tensor:
    """Step 5: truncate the values to upload into [-gamma, gamma]."""
    return clip_by_value(values, gamma)


def estimate_sensitivity(gamma: float) -> float:
    """Delta f = 2 gamma ("Estimating sensitivity"): values in [-gamma, gamma] differ by at most 2 gamma."""
    return 2 * gamma


def participant_upload(
    delta: torch.Tensor, config: DSSGDConfig, generator: torch.Generator | None = None
) -> Upload:
    """Steps 4-5: select, clip and (with DP) perturb the changes to upload, by `config`."""
    _flat("delta", delta)
    if not torch.isfinite(delta).all():
        raise ValueError("delta contains NaN or Inf: local training diverged")
    c = num_upload(config.theta_u, delta.numel())
    if config.dp:  # the generator orders the SVT's queries; its noise is secure unless said otherwise
        return _private_upload(delta, c, config, generator, generator if config.insecure_seeded_noise else None)
    if config.selection == "largest":
        indices = select_largest(delta, c)
    else:
        indices = select_random_above_threshold(delta, c, config.tau, generator)
    return Upload(indices, clip_selected(delta.detach()[indices], config.gamma), math.inf, math.inf)


def round_epsilon(config: DSSGDConfig, num_params: int) -> float:
    """The epsilon one participant spends in one round it uploads in: the SVT's guaranteed figure for the
    configured variant (the proven one spends exactly ``config.epsilon``), from the config alone."""
    c = num_upload(config.theta_u, num_params)
    sensitivity = estimate_sensitivity(config.gamma)
    return guaranteed_epsilon(budget_split(config.epsilon, c, config.svt_variant, sensitivity), c, sensitivity)


def _private_upload(
    delta: torch.Tensor,
    c: int,
    config: DSSGDConfig,
    generator: torch.Generator | None,
    noise_generator: torch.Generator | None,
) -> Upload:
    """With DP: the SVT tests |clip(Delta w_j)| against tau; the noisy values it releases are re-clipped."""
    svt = svt_above_threshold if config.svt_variant == "proven" else svt_dssgd
    result = svt(
        clip_by_value(delta.detach(), config.gamma),
        config.tau,
        c,
        config.epsilon,
        estimate_sensitivity(config.gamma),
        generator,
        noise_generator=noise_generator,
    )
    order = torch.argsort(result.indices)
    return Upload(
        result.indices[order],
        clip_selected(result.values[order], config.gamma),
        result.epsilon_claimed,
        result.epsilon_guaranteed,
    )


def _as_numpy(name: str, x: torch.Tensor | np.ndarray) -> np.ndarray:
    array = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if array.ndim != 1:
        raise PayloadError(f"{name} must be 1-D, got shape {array.shape}")
    return array


def validate_upload(
    indices: torch.Tensor | np.ndarray, values: torch.Tensor | np.ndarray, num_params: int, gamma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check an upload before it touches the server: (int64 indices, float values), or PayloadError.

    Self-contained on purpose: the codec checks some of this too, but the update counters must
    never move on a payload that is later found bad.
    """
    idx = _as_numpy("indices", indices)
    vals = _as_numpy("values", values)
    if idx.shape != vals.shape:
        raise PayloadError(f"{idx.size} indices but {vals.size} values")
    if idx.dtype.kind not in ("i", "u"):
        raise PayloadError(f"indices must be integers, got dtype {idx.dtype}")
    if vals.dtype.kind != "f":
        raise PayloadError(f"values must be floating point, got dtype {vals.dtype}")
    if idx.size and (idx < 0).any():
        raise PayloadError(f"negative index {int(idx.min())}")
    if idx.size and (idx >= num_params).any():
        raise PayloadError(f"index {int(idx.max())} out of range for {num_params} parameters")
    if np.unique(idx).size != idx.size:
        raise PayloadError("duplicate indices")
    if not np.isfinite(vals).all():
        raise PayloadError("values contain NaN or Inf")
    if vals.size and np.abs(vals).max() > gamma * (1 + GAMMA_TOLERANCE):
        largest = float(np.abs(vals).max())
        raise PayloadError(f"value of magnitude {largest} outside [-gamma, gamma] with gamma={gamma}")
    return torch.from_numpy(idx.astype(np.int64)), torch.from_numpy(vals.copy())


class DSSGDServer:
    """The parameter server (Sec. 4.3): global parameters w and update counters stat_j, both flat."""

    def __init__(self, params: torch.Tensor, config: DSSGDConfig) -> None:
        _flat("params", params)
        if not torch.isfinite(params).all():
            raise ValueError("initial params must be finite")
        self.config = config
        self._params = params.detach().clone()
        self._stats = torch.zeros(params.numel(), dtype=torch.float64, device=params.device)

    @property
    def num_params(self) -> int:
        return self._params.numel()

    @property
    def params(self) -> torch.Tensor:
        """A copy of the global parameters."""
        return self._params.clone()

    @property
    def stats(self) -> torch.Tensor:
        """A copy of the update counters stat_j."""
        return self._stats.clone()

    def apply_upload(
        self, indices: torch.Tensor | np.ndarray, values: torch.Tensor | np.ndarray
    ) -> None:
        """w_j += Delta w_j and stat_j += 1 for each uploaded j; a rejected upload changes nothing."""
        idx, vals = validate_upload(indices, values, self.num_params, self.config.gamma)
        idx = idx.to(self._params.device)
        self._params[idx] += vals.to(self._params.device, self._params.dtype)
        self._stats[idx] += 1

    def decay_counters(self, beta: float) -> None:
        """stat := beta * stat, so recent updates weigh more in the download ranking."""
        if not 0 < beta <= 1:
            raise ValueError(f"decay factor beta must be in (0, 1], got {beta}")
        self._stats *= beta

    def maybe_decay(self, round_idx: int) -> bool:
        """Decay by config.counter_decay after every decay_every-th round (1-based); True if it did."""
        if isinstance(round_idx, bool) or not isinstance(round_idx, int) or round_idx < 1:
            raise ValueError(f"round_idx must be an int >= 1 (Flower counts from 1), got {round_idx!r}")
        if self.config.counter_decay == 1 or round_idx % self.config.decay_every:
            return False
        self.decay_counters(self.config.counter_decay)
        return True

    def serve_download(self, theta_d: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Step 1, server side: the theta_d fraction of parameters ranked by stat_j, and their values."""
        indices = download_indices(self._stats, self.config.theta_d if theta_d is None else theta_d)
        return indices, self._params[indices].clone()

    def state_dict(self) -> dict[str, np.ndarray]:
        """Parameters and counters as NumPy arrays, for checkpoints and Flower's context state."""
        return {"params": self._params.cpu().numpy().copy(), "stats": self._stats.cpu().numpy().copy()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore what `state_dict` saved; the shapes must match this server's model."""
        params, stats = np.asarray(state["params"]), np.asarray(state["stats"])
        expected = (self.num_params,)
        if params.shape != expected or stats.shape != expected:
            raise ValueError(
                f"state shapes params {params.shape}, stats {stats.shape} do not match {expected}"
            )
        if not (np.isfinite(params).all() and np.isfinite(stats).all()) or (stats < 0).any():
            raise ValueError("state must be finite with non-negative counters")
        device = self._params.device
        self._params = torch.as_tensor(params, dtype=self._params.dtype).to(device).clone()
        self._stats = torch.as_tensor(stats, dtype=torch.float64).to(device).clone()
