"""Sample-level DP-SGD with its noise added in shares under SecAgg+ (``DistributedDPSGD``), Message API.

The strategy's DP-SGD plan describes the secure sum: each of a round's n clients runs one lot of DP-SGD
at noise multiplier sigma / sqrt(n - t), the server unmasks the mean of their steps and charges every
client one step at the multiplier the sum really carries. Tests run the project's FedAvg client
(``fedavg_train``) behind ``secaggplus_mod`` on an ``InProcessGrid``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.secure_aggregation.secaggplus_constants import Stage
from flwr_privacy.clients.message import fedavg_train
from flwr_privacy.clients.secagg import secaggplus_mod
from flwr_privacy.strategies.message import DGC, DistributedDPSGD, FedAvg, SecAggPlus
from flwr_privacy.strategies.privacy import dpsgd_spent
from opacus.accountants import RDPAccountant

from experiments.inprocess import InProcessGrid
from flwr_privacy.data import TensorData
from flwr_privacy.privacy.dpsgd import DPSGDConfig, DPSGDPlan
from flwr_privacy.training import SGDSettings
from tests.strategies.test_secagg import drop_at

NUM_NODES = 6
EXAMPLES = 64
TEACHER = torch.randn(32, 3, generator=torch.Generator().manual_seed(7))


def net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(32, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


def node_data(pid: int, n: int = EXAMPLES) -> TensorData:
    """A linearly separable task, the same teacher on every node."""
    x = torch.randn(n, 32, generator=torch.Generator().manual_seed(100 + pid))
    return TensorData(x.reshape(n, 1, 1, 32), (x @ TEACHER).argmax(1))


def flat(model: torch.nn.Module) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Flatten(), model)


def plan(noise_multiplier: float, max_grad_norm: float, batch_size: int, local_steps: int | None = 1) -> DPSGDPlan:
    config = DPSGDConfig(enabled=True, noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm)
    return DPSGDPlan(config, batch_size, EXAMPLES, 1, local_steps)


def app(lr: float, *front_mods, seen: dict[int, float] | None = None) -> ClientApp:
    client_app = ClientApp(mods=[*front_mods, secaggplus_mod])

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        if seen is not None:
            seen[pid] = float(msg.content["config"]["dpsgd.noise-multiplier"])
        model = flat(net())
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        return fedavg_train(msg, context, model, node_data(pid), settings=SGDSettings(lr=lr, momentum=0.9))

    return client_app


def run(client_app: ClientApp, dpsgd: DPSGDPlan, rounds: int = 1, tolerated: int = 0, evaluate_fn=None, **options):
    secagg = SecAggPlus(num_shares=5, reconstruction_threshold=3, dp=DistributedDPSGD(tolerated=tolerated))
    strategy = FedAvg(secagg=secagg, dpsgd=dpsgd, fraction_evaluate=0.0, **options)
    initial = ArrayRecord(flat(net()).state_dict())
    result = strategy.start(grid=InProcessGrid(client_app, {}, NUM_NODES), initial_arrays=initial,
                            num_rounds=rounds, evaluate_fn=evaluate_fn)
    return strategy, initial, result


def change(initial: ArrayRecord, result) -> np.ndarray:
    return np.concatenate([
        (result.arrays[k].numpy().astype(np.float64) - a.numpy()).ravel() for k, a in initial.items()
    ])


def opacus_epsilon(noise_multipliers: list[float], sample_rate: float, delta: float = 1e-5) -> float:
    accountant = RDPAccountant()
    for z in noise_multipliers:
        accountant.step(noise_multiplier=z, sample_rate=sample_rate)
    return accountant.get_epsilon(delta)


def one_step_epsilon(noise_multiplier: float, batch: int) -> float:
    """The ledger's epsilon for one step of plain DP-SGD at that multiplier (checked against Opacus below, at
    multipliers whose optimal order lies within Opacus's orders; sigma 100's lies beyond them)."""
    return dpsgd_spent(plan(noise_multiplier, 1.0, batch), 1).epsilon


def test_each_client_adds_its_share_and_the_sum_carries_the_plans_noise():
    """sigma 100 drowns the clipped gradients (their mean moves the model by at most lr C): what the model
    moved by is the noise, of std lr sigma C / (n B) if the n shares of sigma^2 C^2 / n add up to the
    plan's sigma (sqrt(n) times that if each client added all of it)."""
    sigma, clip, batch, lr = 100.0, 0.01, 4, 0.1
    seen: dict[int, float] = {}
    strategy, initial, result = run(app(lr, seen=seen), plan(sigma, clip, batch))
    assert seen == {pid: pytest.approx(sigma / np.sqrt(NUM_NODES)) for pid in range(NUM_NODES)}
    moved = change(initial, result)
    assert np.std(moved) == pytest.approx(lr * sigma * clip / (NUM_NODES * batch), rel=0.1)
    record = strategy.history[-1]
    assert record["accepted"] == NUM_NODES and record["distributed_dpsgd_noise_multiplier"] == pytest.approx(sigma)
    assert record["epsilon_total_max"] == pytest.approx(one_step_epsilon(sigma, batch))


def test_the_ledger_charges_one_dp_sgd_step_a_round_as_opacus_counts_it():
    sigma, batch = 1.2, 16
    strategy, _, _ = run(app(0.5), plan(sigma, 1.0, batch), rounds=3)
    epsilons = [r["epsilon_total_max"] for r in strategy.history[1:]]
    for rounds, epsilon in enumerate(epsilons, start=1):
        assert epsilon == pytest.approx(opacus_epsilon([sigma] * rounds, batch / EXAMPLES), rel=0.02)


def test_a_drop_out_after_its_share_was_set_leaves_less_noise_and_the_ledger_charges_it():
    """Node 0 is sent its share with the others but never sends it: the sum of 5 shares of sigma^2 C^2 / 6
    carries sigma sqrt(5 / 6), the mean over 5 has std lr sigma sqrt(5 / 6) C / (5 B), and epsilon is that
    of the smaller multiplier."""
    sigma, clip, batch, lr = 100.0, 0.01, 4, 0.1
    strategy, initial, result = run(app(lr, drop_at(Stage.COLLECT_MASKED_VECTORS, 0)), plan(sigma, clip, batch))
    record = strategy.history[-1]
    z = sigma * np.sqrt(5 / 6)
    assert record["accepted"] == 5 and record["distributed_dpsgd_noise_multiplier"] == pytest.approx(z)
    assert np.std(change(initial, result)) == pytest.approx(lr * z * clip / (5 * batch), rel=0.1)
    assert record["epsilon_total_max"] == pytest.approx(one_step_epsilon(z, batch))
    assert record["epsilon_total_max"] > one_step_epsilon(sigma, batch)


def test_tolerated_colluders_raise_each_share():
    seen: dict[int, float] = {}
    run(app(0.1, seen=seen), plan(2.0, 1.0, 16), tolerated=2)
    assert len(seen) == NUM_NODES and all(v == pytest.approx(2.0 / np.sqrt(NUM_NODES - 2)) for v in seen.values())


def test_a_few_rounds_of_distributed_dp_sgd_learn():
    test = node_data(99, 512)
    scorer = flat(net())

    def accuracy(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        scorer.load_state_dict(arrays.to_torch_state_dict())
        with torch.no_grad():
            return MetricRecord({"accuracy": float((scorer(test.x).argmax(1) == test.y).float().mean())})

    strategy, _, _ = run(app(0.5), plan(1.0, 1.0, 32), rounds=15, evaluate_fn=accuracy, server_momentum=0.9)
    history = strategy.history
    assert all(r["failures"] == 0 for r in history[1:])
    first, last = history[0]["test_accuracy"], np.mean([r["test_accuracy"] for r in history[-3:]])
    assert last > max(0.6, first + 0.2), [r["test_accuracy"] for r in history]


@pytest.mark.parametrize("dpsgd", [None, plan(1.0, 1.0, 16, local_steps=None), plan(1.0, 1.0, 16, local_steps=2)])
def test_distributed_dp_sgd_needs_a_plan_of_one_lot_a_round(dpsgd):
    secagg = SecAggPlus(dp=DistributedDPSGD())
    with pytest.raises(ValueError, match="needs dpsgd=DPSGDPlan\\(..., local_steps=1\\)"):
        FedAvg(secagg=secagg, dpsgd=dpsgd)


def test_dgc_refuses_distributed_dp_sgd_saying_why():
    strategy = DGC(lr=0.1, secagg=SecAggPlus(dp=DistributedDPSGD()), dpsgd=plan(1.0, 1.0, 16))
    with pytest.raises(ValueError, match="DGC cannot run DistributedDPSGD"):
        strategy.initialize(ArrayRecord(flat(net()).state_dict()))


@pytest.mark.parametrize("tolerated", [-1, 1.5, True])
def test_a_bad_tolerated_count_is_refused(tolerated):
    with pytest.raises(ValueError, match="tolerated="):
        DistributedDPSGD(tolerated=tolerated)


def test_server_momentum_on_one_sgd_step_per_client_is_heavy_ball_sgd_on_the_mean_gradient():
    """Clients that each take one plain step of size lr on f_k(w) = |w - c_k|^2 / 2 (equal example counts),
    under FedAvg(server_momentum=beta): the model torch's SGD(lr, momentum=beta) reaches on their mean."""
    lr, beta, rounds = 0.1, 0.9, 5
    centres = {pid: np.random.default_rng(pid).normal(size=(4,)).astype(np.float32) for pid in range(NUM_NODES)}
    plain = ClientApp()

    @plain.train()
    def train(msg: Message, context: Context) -> Message:
        w = msg.content["arrays"]["w"].numpy()
        moved = w - lr * (w - centres[int(context.node_config["partition-id"])])
        content = {"arrays": ArrayRecord(array_dict={"w": Array(moved)}), "metrics": MetricRecord({"num-examples": 10})}
        return Message(RecordDict(content), reply_to=msg)

    strategy = FedAvg(server_momentum=beta, fraction_evaluate=0.0)
    initial = np.zeros(4, dtype=np.float32)
    initial_arrays = ArrayRecord(array_dict={"w": Array(initial)})
    result = strategy.start(grid=InProcessGrid(plain, {}, NUM_NODES), initial_arrays=initial_arrays, num_rounds=rounds)
    w = torch.zeros(4, requires_grad=True)
    optimizer = torch.optim.SGD([w], lr=lr, momentum=beta)
    mean_centre = torch.from_numpy(np.mean(list(centres.values()), axis=0))
    for _ in range(rounds):
        optimizer.zero_grad()
        w.grad = (w - mean_centre).detach()
        optimizer.step()
    np.testing.assert_allclose(result.arrays["w"].numpy(), w.detach().numpy(), atol=1e-5)


@pytest.mark.parametrize("beta", [-0.1, 1.0, "0.9", True])
def test_a_bad_server_momentum_is_refused(beta):
    with pytest.raises(ValueError, match="server_momentum="):
        FedAvg(server_momentum=beta)
