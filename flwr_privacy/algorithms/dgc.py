"""Deep Gradient Compression (Lin, Han, Mao, Wang, Dally, ICLR 2018, arXiv 1712.01887): a client's memory.

A client keeps, over the flat vector of its model, the momentum ``u`` and the accumulated gradient
``v`` of Eq. 7. Per step it clips the gradient (local gradient clipping, sec. 3.2) and folds it into
``u`` and ``v`` (momentum correction, sec. 3.2); per round it sends the largest entries of ``v`` layer
by layer (Algorithm 1, at the round's warm-up sparsity, sec. 3.3) and clears what it sent from ``v``
and, with momentum factor masking (sec. 3.3, Eq. 8), from ``u``.

As in the reference implementation (synxlin/deep-gradient-compression), only tensors of more than one
dimension are compressed: the others (biases, batch-norm weights) and any tensor smaller than
``dense_below`` go whole, as their raw accumulated gradient, and get their momentum on the server after
averaging (``DGCServer``), unmasked. Weight decay is the server's too, applied densely every round and
not to those one-dimensional tensors. The server averages the updates and takes an SGD step, with
momentum only where the clients kept none (a momentum on top of ``v`` would apply it twice).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from flwr_privacy.compression.topk import select_sampled_threshold, select_topk
from flwr_privacy.privacy.clipping import clip_by_l2_norm

SELECTIONS = ("topk", "sampled")
# How a client spends local_steps mini-batches in a round: the reference's gradient accumulation (their
# gradients at the round's weights summed into one step), or local SGD (a momentum-SGD step after each).
LOCAL_UPDATES = ("accumulate", "local_sgd")
# The server's learning rate after its warm-up: constant, cosine annealing to 0 over lr_total_rounds, or
# multiplied by lr_gamma at each of lr_milestones (the reference's schedules).
LR_SCHEDULES = ("constant", "cosine", "step")
# The paper's warm-up (sec. 3.3): sparsity rises exponentially, about 1 - 0.25^(e+1), to 99.9 %.
PAPER_WARMUP_SPARSITIES = (0.75, 0.9375, 0.984375, 0.996, 0.999)


def _invalid(key: str, value: object, allowed: str) -> ValueError:
    return ValueError(f"DGCConfig.{key}={value!r} is invalid: {allowed}")


@dataclass(frozen=True)
class DGCConfig:
    """DGC's settings; each technique of the paper's Table 1 has its own switch, for ablations.

    As a run config writes them, ``warmup_sparsities`` may be a comma-separated string and
    ``clip_norm`` 0 means no clipping. Left unset, ``warmup_sparsities`` is the paper's schedule
    (75 %, 93.75 %, 98.4375 %, 99.6 %, 99.9 %) up to ``final_sparsity``.

    ``compress_vectors`` also sparsifies one-dimensional tensors (the reference sends them dense);
    ``local_update`` is how ``local_steps`` mini-batches make a round (``LOCAL_UPDATES``); weight decay is
    applied by the server (``DGCServer``), not sparsified. ``nesterov`` is Nesterov momentum, in the
    clients' correction and the server's momentum alike. The server's learning rate (``lr_at``) rises
    linearly over ``lr_warmup_rounds``, then follows ``lr_schedule``: ``cosine`` to 0 at round
    ``lr_total_rounds``, or ``step``, times ``lr_gamma`` at each of ``lr_milestones`` (a comma-separated
    string in a run config).
    """

    momentum: float = 0.9
    weight_decay: float = 0.0
    momentum_correction: bool = True
    local_accumulation: bool = True
    momentum_masking: bool = True
    clip_norm: float | None = None
    num_workers: int = 1
    final_sparsity: float = 0.999
    warmup_sparsities: tuple[float, ...] = None  # type: ignore[assignment]  # None: resolved in __post_init__
    warmup_rounds_per_stage: int = 1
    selection: str = "sampled"
    sample_ratio: float = 0.01
    dense_below: int = 0
    compress_vectors: bool = False
    local_update: str = "accumulate"
    nesterov: bool = False
    lr_warmup_rounds: int = 0
    lr_schedule: str = "constant"
    lr_total_rounds: int = 0
    lr_milestones: tuple[int, ...] = ()
    lr_gamma: float = 0.1

    def __post_init__(self) -> None:
        # Hydra hands over lists and run configs strings; a tuple keeps the config hashable and unchanging.
        if self.warmup_sparsities is None:
            paper = tuple(s for s in PAPER_WARMUP_SPARSITIES if s <= self.final_sparsity)
            object.__setattr__(self, "warmup_sparsities", paper)
        self._as_tuple("warmup_sparsities", float, "must be comma-separated numbers")
        self._as_tuple("lr_milestones", int, "must be comma-separated round numbers")
        if self.clip_norm == 0 and not isinstance(self.clip_norm, bool):
            object.__setattr__(self, "clip_norm", None)
        self._check_ranges()
        self._check_schedule()
        self._check_combinations()

    def _as_tuple(self, key: str, cast: Callable[[Any], Any], allowed: str) -> None:
        """A list, a tuple or a comma-separated string of values, stored as a tuple of ``cast`` values."""
        value = getattr(self, key)
        items = [v for v in value.split(",") if v.strip()] if isinstance(value, str) else value
        try:
            object.__setattr__(self, key, tuple(cast(v) for v in items))
        except (TypeError, ValueError):
            raise _invalid(key, value, allowed) from None

    def _check_ranges(self) -> None:
        if not 0 <= self.momentum < 1:
            raise _invalid("momentum", self.momentum, "must be in [0, 1)")
        if not self.weight_decay >= 0:
            raise _invalid("weight_decay", self.weight_decay, "must be >= 0")
        if self.clip_norm is not None and not (self.clip_norm > 0 and math.isfinite(self.clip_norm)):
            raise _invalid("clip_norm", self.clip_norm, "must be None (no clipping) or a finite number > 0")
        if not (isinstance(self.num_workers, int) and self.num_workers >= 1):
            raise _invalid("num_workers", self.num_workers, "must be an integer >= 1")
        if not 0 <= self.final_sparsity < 1:
            raise _invalid("final_sparsity", self.final_sparsity, "must be in [0, 1)")
        if not (isinstance(self.warmup_rounds_per_stage, int) and self.warmup_rounds_per_stage >= 1):
            raise _invalid("warmup_rounds_per_stage", self.warmup_rounds_per_stage, "must be an integer >= 1")
        if self.selection not in SELECTIONS:
            raise _invalid("selection", self.selection, f"allowed: {SELECTIONS}")
        if not 0 < self.sample_ratio <= 1:
            raise _invalid("sample_ratio", self.sample_ratio, "must be in (0, 1]")
        if not (isinstance(self.dense_below, int) and self.dense_below >= 0):
            raise _invalid("dense_below", self.dense_below, "must be an integer >= 0")
        if self.local_update not in LOCAL_UPDATES:
            raise _invalid("local_update", self.local_update, f"allowed: {LOCAL_UPDATES}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise _invalid("lr_schedule", self.lr_schedule, f"allowed: {LR_SCHEDULES}")
        for name in ("lr_warmup_rounds", "lr_total_rounds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise _invalid(name, value, "must be an integer >= 0")
        if self.lr_schedule == "cosine" and self.lr_total_rounds <= self.lr_warmup_rounds:
            raise _invalid("lr_total_rounds", self.lr_total_rounds, "cosine needs more rounds than lr_warmup_rounds")
        if any(m < 1 for m in self.lr_milestones) or list(self.lr_milestones) != sorted(set(self.lr_milestones)):
            raise _invalid("lr_milestones", self.lr_milestones, "must be increasing round numbers >= 1")
        if not 0 < self.lr_gamma <= 1:
            raise _invalid("lr_gamma", self.lr_gamma, "must be in (0, 1]")

    def _check_schedule(self) -> None:
        schedule = self.warmup_sparsities + (self.final_sparsity,)
        if any(not 0 <= s < 1 for s in schedule):
            raise _invalid("warmup_sparsities", self.warmup_sparsities, "every entry must be in [0, 1)")
        if any(a > b for a, b in zip(schedule, schedule[1:])):
            raise _invalid(
                "warmup_sparsities",
                self.warmup_sparsities,
                f"must be non-decreasing and end at or below final_sparsity={self.final_sparsity}",
            )

    def _check_combinations(self) -> None:
        if self.momentum_correction and self.momentum == 0:
            raise _invalid("momentum_correction", True, "needs momentum > 0: there is no momentum to correct")
        if self.momentum_masking and not self.momentum_correction:
            raise _invalid(
                "momentum_masking",
                True,
                "needs momentum_correction=True: without it the client keeps no momentum u to mask",
            )
        if self.momentum_masking and not self.local_accumulation:
            raise _invalid(
                "momentum_masking",
                True,
                "needs local_accumulation=True: masking stops stale momentum pushing delayed residuals,"
                " and without accumulation nothing is delayed",
            )

    def lr_at(self, server_round: int, lr: float) -> float:
        """The server's learning rate in a 1-based round: linear warm-up, then the schedule."""
        if server_round < 1:
            raise ValueError(f"server_round={server_round} is invalid: must be >= 1")
        if server_round <= self.lr_warmup_rounds:
            return lr * server_round / self.lr_warmup_rounds
        if self.lr_schedule == "cosine":
            done = (server_round - self.lr_warmup_rounds) / (self.lr_total_rounds - self.lr_warmup_rounds)
            return lr * 0.5 * (1 + math.cos(math.pi * min(1.0, done)))
        if self.lr_schedule == "step":
            return lr * self.lr_gamma ** sum(server_round >= m for m in self.lr_milestones)
        return lr

    def sparsity_at(self, round_index: int) -> float:
        """Warm-up sparsity (sec. 3.3) of the 0-based round: each schedule entry for warmup_rounds_per_stage
        rounds (the paper's stage is an epoch: set it to the rounds one pass over the data takes), then final."""
        if round_index < 0:
            raise ValueError(f"round_index={round_index} is invalid: must be >= 0")
        stage = round_index // self.warmup_rounds_per_stage
        if stage < len(self.warmup_sparsities):
            return self.warmup_sparsities[stage]
        return self.final_sparsity


def kept_count(numel: int, sparsity: float) -> int:
    """Entries one tensor of numel entries sends at a sparsity: ceil((1 - sparsity) * numel), at least 1."""
    # Rounding first keeps float noise from adding an entry: (1 - 0.999) * 1000 is 1.0000000000000009.
    return max(1, math.ceil(round((1 - sparsity) * numel, 6)))


def dense_tensors(shapes: Sequence[Sequence[int]], config: DGCConfig) -> list[bool]:
    """Per parameter tensor, whether it travels whole: one-dimensional (unless ``compress_vectors``), as
    the reference compresses only tensors of more than one dimension, or smaller than ``dense_below``."""
    return [
        (len(shape) <= 1 and not config.compress_vectors) or math.prod(shape) < config.dense_below
        for shape in shapes
    ]


def decayed_tensors(shapes: Sequence[Sequence[int]]) -> list[bool]:
    """Per parameter tensor, whether weight decay applies: not to biases and batch-norm weights (1-D)."""
    return [len(shape) > 1 for shape in shapes]


def per_entry(flags: Sequence[bool], segments: Sequence[int], device: torch.device | str) -> torch.Tensor:
    """A per-tensor flag spread over the flat vector's entries."""
    return torch.repeat_interleave(
        torch.tensor(list(flags), dtype=torch.bool), torch.tensor(list(segments), dtype=torch.long)
    ).to(device)


def entries_sent(segments: Sequence[int], dense: Sequence[bool], sparsity: float) -> int:
    """Entries a client sends at this sparsity: the sum over tensors of kept_count, or all of a dense one."""
    return sum(n if whole else kept_count(n, sparsity) for n, whole in zip(segments, dense))


class DGCMemory:
    """One client's u (momentum) and v (accumulated gradient) over a flat model, per Algorithm 1 and Eq. 7.

    ``dense`` marks, per tensor, those sent whole with their raw gradient (``dense_tensors``); by default
    the tensors smaller than ``dense_below``.
    """

    def __init__(
        self,
        config: DGCConfig,
        segments: Sequence[int],
        device: torch.device | str = "cpu",
        dense: Sequence[bool] | None = None,
    ) -> None:
        segments = tuple(int(n) for n in segments)
        if not segments or any(n < 1 for n in segments):
            raise ValueError(f"segments={segments!r} is invalid: need at least one tensor size, each >= 1")
        dense = [n < config.dense_below for n in segments] if dense is None else list(dense)
        if len(dense) != len(segments):
            raise ValueError(f"dense has {len(dense)} flags for {len(segments)} tensors")
        self.config = config
        self.segments = segments
        self.dense = dense
        self.numel = sum(segments)
        self.compressed = ~per_entry(dense, segments, device)
        self.u = torch.zeros(self.numel, device=device)
        self.v = torch.zeros(self.numel, device=device)

    def clip_gradient(self, grad: torch.Tensor) -> torch.Tensor:
        """Local gradient clipping (sec. 3.2) of a client's mean gradient: L2 norm to clip_norm * N^(1/2).

        The paper clips G^k = (1 / (N b)) sum of sample gradients to thr * N^(-1/2), so that the sum over
        N nodes stays near thr; a local mean gradient is N G^k and the server averages, hence N^(+1/2).
        """
        if self.config.clip_norm is None:
            return grad
        return clip_by_l2_norm(grad, self.config.clip_norm * self.config.num_workers**0.5)

    def momentum_correction(self, grad: torch.Tensor) -> torch.Tensor:
        """Momentum correction (Eq. 7): u <- m u + g; v <- v + u on compressed tensors (Nesterov:
        v <- v + g + m u, as the reference); returns v's increase."""
        self.u.mul_(self.config.momentum).add_(torch.where(self.compressed, grad, 0.0))
        velocity = grad + self.config.momentum * self.u if self.config.nesterov else self.u
        step = torch.where(self.compressed, velocity, grad)
        self.v.add_(step)
        return step

    def gradient_accumulation(self, grad: torch.Tensor) -> torch.Tensor:
        """Ablation without momentum correction (Eq. 5): v <- v + g, the raw gradient accumulates.

        The paper's baseline applies momentum after sparsification, to the sum of the sparse updates
        (u_t = m u_{t-1} + sum_k sparse(v_k); w <- w - lr u_t), so it is the server's to apply: see
        DGCServer. The client keeps no u in this mode.
        """
        self.v.add_(grad)
        return grad

    def accumulate(self, grad: torch.Tensor) -> torch.Tensor:
        """One step (Algorithm 1's inner loop, Eq. 7): clip, then fold into u and v; returns v's increase
        (the step a local SGD takes). Tensors sent whole accumulate the raw gradient: their momentum is the
        server's."""
        grad = self.clip_gradient(self._check_flat("grad", grad))
        if self.config.momentum_correction:
            return self.momentum_correction(grad)
        return self.gradient_accumulation(grad)

    def compress(
        self, sparsity: float, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k of v per tensor (Algorithm 1's per-layer selection): global int64 indices and their values."""
        if not 0 <= sparsity < 1:
            raise ValueError(f"sparsity={sparsity!r} is invalid: must be in [0, 1)")
        chosen = []
        offset = 0
        for size, dense in zip(self.segments, self.dense):
            part = self.v[offset : offset + size]
            if dense:
                local = torch.arange(size, device=self.v.device)
            else:
                local = self._select(part, kept_count(size, sparsity), generator)
            chosen.append(local + offset)
            offset += size
        indices = torch.cat(chosen)
        return indices, self.v[indices]

    def mask_momentum(self, indices: torch.Tensor) -> None:
        """Clear what was sent: v at indices (all of v without local accumulation); u too if masking (Eq. 8)."""
        if self.config.local_accumulation:
            self.v[indices] = 0
        else:
            self.v.zero_()
        if self.config.momentum_masking:
            self.u[indices] = 0

    def compress_and_mask(
        self, sparsity: float, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One round's send (Algorithm 1, Eq. 8): compress, then mask_momentum on what is sent."""
        indices, values = self.compress(sparsity, generator)
        self.mask_momentum(indices)
        return indices, values

    def take_and_mask(self, indices: torch.Tensor) -> torch.Tensor:
        """A round's send at coordinates chosen for every client alike (``shared_selection``): v there, then
        mask_momentum on them, as ``compress_and_mask`` does on its own top-k."""
        indices = indices.to(self.v.device)
        if indices.dim() != 1 or (len(indices) and (int(indices.min()) < 0 or int(indices.max()) >= self.numel)):
            raise ValueError(f"shared indices must be a flat vector in [0, {self.numel})")
        values = self.v[indices].clone()
        self.mask_momentum(indices)
        return values

    def num_selected(self, sparsity: float) -> int:
        """Entries compress sends at this sparsity (``entries_sent``)."""
        return entries_sent(self.segments, self.dense, sparsity)

    def state_dict(self) -> dict[str, np.ndarray]:
        """u and v as float32 NumPy copies, to survive between rounds in the client's context state."""
        return {"u": self.u.detach().cpu().numpy().copy(), "v": self.v.detach().cpu().numpy().copy()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore u and v saved by state_dict; keys and shapes must match this memory."""
        if set(state) != {"u", "v"}:
            raise ValueError(f"DGC memory state must have keys ['u', 'v'], got {sorted(state)}")
        for key in ("u", "v"):
            array = np.asarray(state[key])
            if array.shape != (self.numel,):
                raise ValueError(f"DGC memory state {key!r}: expected shape ({self.numel},), got {array.shape}")
            getattr(self, key).copy_(torch.from_numpy(array.astype(np.float32)))

    def _select(self, part: torch.Tensor, k: int, generator: torch.Generator | None) -> torch.Tensor:
        if self.config.selection == "topk":
            return select_topk(part, k)[0]
        return select_sampled_threshold(part, k, self.config.sample_ratio, generator)[0]

    def _check_flat(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if x.shape != (self.numel,):
            raise ValueError(f"{name}: expected a flat tensor of shape ({self.numel},), got {tuple(x.shape)}")
        return x.to(device=self.v.device, dtype=self.v.dtype)


def shared_selection(
    segments: Sequence[int], dense: Sequence[bool], sparsity: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """One coordinate set for every client of a round, so that their uploads add up under secure aggregation:
    per tensor k coordinates drawn at random (as many as ``compress`` would take), tensors sent whole in full;
    sorted global int64 indices. Each client's accumulation keeps what was not sent, so this is random-k
    sparsification with error feedback (Stich, Cordonnier & Jaggi 2018), and the set depends on no data.
    (The top-k of the server's last applied update would keep choosing the coordinates it chose before:
    that update is zero elsewhere.)"""
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity={sparsity!r} is invalid: must be in [0, 1)")
    chosen, offset = [], 0
    for size, whole in zip(segments, dense):
        k = size if whole else kept_count(size, sparsity)
        local = torch.arange(size) if k >= size else torch.randperm(size, generator=generator)[:k]
        chosen.append(torch.sort(local).values + offset)
        offset += size
    return torch.cat(chosen)


def local_round(
    memory: DGCMemory,
    gradient_at: Callable[[torch.Tensor], torch.Tensor],
    weights: torch.Tensor,
    steps: int,
    lr: float,
) -> torch.Tensor:
    """A client's ``steps`` mini-batches of one round, through the memory; returns the local weights after.

    ``gradient_at(w)`` is the next mini-batch's gradient at weights ``w``. With ``local_update`` =
    ``accumulate`` (the reference's gradient accumulation) every gradient is taken at the round's weights
    and their sum makes one step; with ``local_sgd`` each gradient is taken where the previous local
    momentum-SGD step (w <- w - lr * what v gained) left the weights.
    """
    if steps < 1:
        raise ValueError(f"steps={steps} must be >= 1")
    if memory.config.local_update == "accumulate":
        total = gradient_at(weights)
        for _ in range(steps - 1):
            total = total + gradient_at(weights)
        memory.accumulate(total)
        return weights
    if not lr > 0:
        raise ValueError(f"lr={lr} must be > 0 for local SGD")
    for _ in range(steps):
        weights = weights - lr * memory.accumulate(gradient_at(weights))
    return weights


def average_sparse(
    updates: Sequence[tuple[torch.Tensor, torch.Tensor]], weights: Sequence[float], numel: int
) -> torch.Tensor:
    """Weighted mean of sparse updates as a dense vector (sum_k n_k sparse(v_k) / sum_k n_k, cf. Eq. 7)."""
    if not updates:
        raise ValueError("no updates to average")
    if len(updates) != len(weights):
        raise ValueError(f"{len(updates)} updates but {len(weights)} weights")
    if any(not w > 0 for w in weights):
        raise ValueError(f"weights must be positive, got {list(weights)}")
    total = float(sum(weights))
    device = updates[0][1].device
    dense = torch.zeros(numel, dtype=torch.float32, device=device)
    for (indices, values), weight in zip(updates, weights):
        dense.index_add_(0, indices.to(device), values.to(device=device, dtype=torch.float32), alpha=weight / total)
    return dense


class DGCServer:
    """The server's step: w <- w - lr * u with u <- m * u + (mean update + weight decay * w).

    The momentum m is 0 on compressed tensors with momentum correction (the clients' v holds it, Eq. 7)
    and ``config.momentum`` on tensors sent whole and, without momentum correction, everywhere (Eq. 5).
    Weight decay is dense, every round, on ``decayed_tensors`` only.
    """

    def __init__(
        self, weights: torch.Tensor, shapes: Sequence[Sequence[int]], config: DGCConfig, lr: float
    ) -> None:
        segments = [math.prod(s) for s in shapes]
        if sum(segments) != weights.numel():
            raise ValueError(f"shapes cover {sum(segments)} entries, the weights have {weights.numel()}")
        if not lr > 0:
            raise ValueError(f"lr={lr} must be > 0")
        self.weights, self.lr, self.config = weights.clone(), lr, config
        self.velocity = torch.zeros_like(weights)
        dense = per_entry(dense_tensors(shapes, config), segments, weights.device)
        with_momentum = dense | (not config.momentum_correction)
        self.momentum = torch.where(with_momentum, config.momentum, 0.0)
        self.decay = per_entry(decayed_tensors(shapes), segments, weights.device) * config.weight_decay

    def step(self, update: torch.Tensor, server_round: int = 1) -> torch.Tensor:
        """Apply one round's mean update at the round's learning rate (``DGCConfig.lr_at``); returns the
        new weights. Nesterov: the step is g + m u rather than u."""
        gradient = update + self.decay * self.weights
        self.velocity = self.momentum * self.velocity + gradient
        step = gradient + self.momentum * self.velocity if self.config.nesterov else self.velocity
        self.weights = self.weights - self.config.lr_at(server_round, self.lr) * step
        return self.weights
