"""One round's upload of one client, as each algorithm puts it on the wire and its server decodes it.

What the gradient-inversion benchmark attacks (``experiments.benchmarks.inversion``). Nothing here
re-implements an algorithm: the server side is the strategy's own ``AlgorithmRounds`` (``configure`` writes
the instruction, ``decode`` validates and decodes the reply) and the client is the project's own
``NumPyClient`` (``fit``), so the payload is the one a deployment would carry, DP-SGD and DSSGD's SVT
included. The client holds exactly the private batch of B images and trains on it full-batch (batch size B):
``steps`` local epochs of one step each (FedAvg, DSSGD), or ``steps`` accumulated mini-batch gradients (DGC).

A setting is named ``<algorithm>[+dp<epsilon>|+svt<epsilon>]``:

- ``fedavg`` (one local step), ``fedavg-<K>steps`` (K local steps): the dense model, decoded as w_k - w;
- ``dgc-<sparsity %>``, e.g. ``dgc-99.9``: DGC's top-k of the accumulated gradient (vectors sent whole);
- ``dssgd-<theta_u %>``, e.g. ``dssgd-10``: DSSGD's largest theta_u of the changes, clipped to gamma;
- ``+dp<epsilon>``: the client runs DP-SGD (``flwr_privacy.privacy.dpsgd``) with the noise multiplier at which
  the ledger charges it ``epsilon`` at delta 1e-5 over ``dp_rounds`` such rounds (``noise_for_target``; the
  plan: B examples, lots of B, so every example is in every lot, and the round's steps);
- ``+svt<epsilon>`` (DSSGD only): DSSGD's sparse vector technique selects and noises the upload, epsilon per
  round.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from flwr.common import RecordDict
from flwr_privacy.clients import DGCClient, DSSGDClient, FedAvgClient
from flwr_privacy.strategies.base import AlgorithmRounds, RoundRecorder
from flwr_privacy.strategies.dgc import DGCRounds
from flwr_privacy.strategies.dssgd import DSSGDRounds
from flwr_privacy.strategies.fedavg import FedAvgRounds
from flwr_privacy.strategies.privacy import dpsgd_spent
from torch import nn

from flwr_privacy.algorithms.dgc import DGCConfig
from flwr_privacy.algorithms.dssgd import DSSGDConfig, round_epsilon
from flwr_privacy.attacks.inversion import LocalTraining, Observation
from flwr_privacy.data import TensorData
from flwr_privacy.privacy.dpsgd import DPSGDConfig, DPSGDPlan, noise_for_target
from flwr_privacy.training import SGDSettings
from flwr_privacy.wire import model_to_arrays, split_trainable, trainable_mask, wire_keys

_NAME = re.compile(
    r"^(?P<algorithm>fedavg|dgc|dssgd)(-(?P<value>\d+(\.\d+)?)(?P<steps>steps)?)?"
    r"(\+(?P<defence>dp|svt)(?P<epsilon>\d+(\.\d+)?))?$"
)
# DSSGD's clipping bound and threshold as the repository's MNIST experiment sets them
# (experiments/conf/experiment/dssgd_mnist_cnn.yaml).
DSSGD_GAMMA = 0.01
DSSGD_TAU = 1e-4
DELTA = 1e-5
# DP-SGD's per-example clipping bound C (DPSGDConfig's default): the attack's cosine does not depend on it.
MAX_GRAD_NORM = 1.0


@dataclass(frozen=True)
class Setting:
    """One row of the table: an algorithm, its compression, and the defence on top."""

    name: str
    algorithm: str
    steps: int = 1
    sparsity: float = 0.0  # DGC
    theta_u: float = 1.0  # DSSGD
    dpsgd_epsilon: float | None = None
    svt_epsilon: float | None = None


def parse_setting(name: str) -> Setting:
    """A setting from its name (the module docstring's grammar); a name outside it is a ValueError."""
    match = _NAME.match(name)
    if match is None:
        raise ValueError(
            f"setting {name!r} is unknown: write fedavg, fedavg-<K>steps, dgc-<sparsity %>, dssgd-<theta_u %>, "
            "each optionally followed by +dp<epsilon> (DP-SGD) or, for dssgd, +svt<epsilon>"
        )
    algorithm, value, steps = match["algorithm"], match["value"], match["steps"]
    defence, epsilon = match["defence"], match["epsilon"]
    if (algorithm == "fedavg") != (value is None or steps is not None):
        raise ValueError(f"setting {name!r}: fedavg takes -<K>steps, dgc and dssgd a percentage")
    if defence == "svt" and algorithm != "dssgd":
        raise ValueError(f"setting {name!r}: the sparse vector technique is DSSGD's (dssgd-<theta_u %>+svt<epsilon>)")
    fields: dict[str, Any] = {}
    if algorithm == "fedavg" and steps:
        fields["steps"] = int(value)
    if algorithm == "dgc":
        fields["sparsity"] = round(float(value) / 100, 12)  # 99.9 / 100 is 0.9990000000000001
    if algorithm == "dssgd":
        fields["theta_u"] = round(float(value) / 100, 12)
    if defence is not None:
        fields["dpsgd_epsilon" if defence == "dp" else "svt_epsilon"] = float(epsilon)
    return Setting(name, algorithm, **fields)


@dataclass(frozen=True)
class Upload:
    """What the server decoded, what it knows of the client's round, and the privacy the ledger records."""

    observation: Observation
    training: LocalTraining
    noise_multiplier: float | None
    epsilon: float | None  # the round's epsilon (DP-SGD's at delta, or the SVT's pure one); None: no DP
    sent: int  # entries on the wire


def dpsgd_plan(setting: Setting, batch: int, rounds: int) -> DPSGDPlan | None:
    """The DP-SGD plan of a setting (None: none), its noise multiplier the one that spends the setting's
    epsilon over ``rounds`` rounds of it."""
    if setting.dpsgd_epsilon is None:
        return None
    config = DPSGDConfig(enabled=True, max_grad_norm=MAX_GRAD_NORM, delta=DELTA, target_epsilon=setting.dpsgd_epsilon)
    dgc = setting.algorithm == "dgc"
    plan = DPSGDPlan(config, batch, batch, 1 if dgc else setting.steps, setting.steps if dgc else None)
    return replace(plan, config=replace(config, noise_multiplier=noise_for_target(plan, rounds)))


def one_round(
    setting: Setting, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, lr: float = 0.05,
    seed: int = 0, dp_rounds: int = 1, gamma: float = DSSGD_GAMMA,
) -> Upload:
    """The client's upload for one round on (images, labels) from the global ``model``, as its server decodes it."""
    names = [n for n, _ in model.named_parameters()]
    if [k for k in wire_keys(model) if k in set(names)] != names:
        raise ValueError("the model's wire order of parameters is not its parameters() order")
    batch = len(labels)
    arrays = model_to_arrays(model)
    trainable = trainable_mask(model)
    plan = dpsgd_plan(setting, batch, dp_rounds)
    data = TensorData(images.detach().cpu(), labels.detach().cpu())
    local = copy.deepcopy(model)
    common: dict[str, Any] = {"state": RecordDict(), "seed": seed, "device": "cpu"}
    rounds: AlgorithmRounds
    epsilon = None if plan is None else float(dpsgd_spent(plan, plan.steps(batch)).epsilon)
    if setting.algorithm == "fedavg":
        rounds = FedAvgRounds(arrays)
        client: Any = FedAvgClient(
            local, data, settings=SGDSettings(lr=lr, batch_size=batch), local_epochs=setting.steps, **common
        )
    elif setting.algorithm == "dgc":
        config = DGCConfig(final_sparsity=setting.sparsity, warmup_sparsities=(), num_workers=1)
        rounds = DGCRounds(arrays, trainable, config, lr)
        client = DGCClient(local, data, local_steps=setting.steps, batch_size=batch, **common)
    else:
        svt = setting.svt_epsilon is not None
        dssgd = DSSGDConfig(
            theta_u=setting.theta_u, gamma=gamma, tau=DSSGD_TAU, dp=svt, epsilon=setting.svt_epsilon or 1.0
        )
        rounds = DSSGDRounds(arrays, trainable, dssgd)
        client = DSSGDClient(
            local, data, settings=SGDSettings(lr=lr, batch_size=batch), local_epochs=setting.steps, **common
        )
        if svt:
            epsilon = round_epsilon(dssgd, sum(p.numel() for p in model.parameters()))
    # A curious server keeps what it received even where its bound on an update's size (a robustness
    # check, not part of decoding) would refuse it: a lot of one image under DP-SGD's noise can exceed it.
    rounds.max_update_ratio = math.inf
    rounds.recorder = RoundRecorder()
    rounds.recorder.start(1)
    rounds.ledger.plan = plan
    ((payload, config_sent),) = rounds.configure(1, ["client"])
    instruction = {**config_sent, **rounds.instruction_settings()}
    reply, _, _ = client.fit(rounds.global_arrays() if payload is None else payload, instruction)
    decoded = rounds.decode(reply)
    training = LocalTraining(lr, setting.steps)
    noise = None if plan is None else plan.config.noise_multiplier
    if setting.algorithm == "fedavg":
        after, _ = split_trainable(decoded, trainable)
        before, _ = split_trainable(arrays, trainable)
        observation = Observation(after - before, None, "change")
        return Upload(observation, training, noise, epsilon, after.numel())
    indices, values, _ = decoded
    numel = sum(p.numel() for p in model.parameters())
    flat = torch.zeros(numel).index_copy_(0, indices, values.float())
    seen = torch.zeros(numel, dtype=torch.bool).index_fill_(0, indices, True)
    kind, clipped = ("gradient", None) if setting.algorithm == "dgc" else ("change", gamma)
    return Upload(Observation(flat, seen, kind, clipped), training, noise, epsilon, int(np.asarray(indices).size))
