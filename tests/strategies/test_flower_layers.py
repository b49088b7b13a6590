"""Our strategies inside Flower's own privacy layers: client-level DP wrappers and SecAgg+ (``strategies.layers``).

FedAvg runs inside them: with the noise off, a round's model is the plain (uniform) mean of the same
clipped updates; with the noise on, the clients get the noised model the wrapper returned, not the
strategy's own un-noised average. DGC and DSSGD, whose updates are sparse, refuse them before anything is
sent, saying why.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.client import ClientApp
from flwr.client.mod import fixedclipping_mod, secaggplus_mod
from flwr.common import Context, RecordDict, parameters_to_ndarrays
from flwr.server import LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import DifferentialPrivacyClientSideFixedClipping, DifferentialPrivacyServerSideFixedClipping
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

from experiments.client_app import client_fn
from experiments.inprocess import InProcessGrid, run_inprocess

CLIP = 0.5
# Unequal partitions: an example-weighted mean is not the uniform mean the wrappers' noise is calibrated to.
UNEQUAL = {"partition": "dirichlet", "alpha": 0.5, "lr": 0.1}


def flat(arrays) -> np.ndarray:
    return np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])


def clipped_mean(sent: np.ndarray, models: list[np.ndarray]) -> np.ndarray:
    """The uniform mean of the clients' updates, each clipped to CLIP: what the wrappers' noise is calibrated to."""
    updates = [m - sent for m in models]
    return sent + np.mean([u * min(1.0, CLIP / np.linalg.norm(u)) for u in updates], axis=0)


def test_fedavg_inside_server_side_clipping_without_noise_is_the_mean_of_the_clipped_updates(federation):
    fed = federation("fedavg", **UNEQUAL)
    sent = flat(fed.strategy.global_arrays())
    models = {}
    for proxy in fed.proxies:  # each client's own model, before the wrapper clips its reply in place
        original = proxy.fit

        def keep_copy(ins, timeout, group_id, original=original, cid=proxy.cid):
            res = original(ins, timeout, group_id)
            models[cid] = flat(parameters_to_ndarrays(res.parameters))
            return res

        proxy.fit = keep_copy
    wrapper = DifferentialPrivacyServerSideFixedClipping(fed.strategy, 0.0, CLIP, num_sampled_clients=4)
    run_inprocess(wrapper, fed.manager, 1)
    counts = [c.res.num_examples for c in fed.calls]
    assert len(set(counts)) > 1, counts  # unequal clients: weighing by examples would differ
    expected = clipped_mean(sent, [models[cid] for cid in sorted(models)])
    assert np.allclose(flat(fed.strategy.global_arrays()), expected, atol=1e-6)
    assert fed.strategy.history[-1]["accepted"] == 4


def test_fedavg_inside_server_side_clipping_sends_the_noised_model_on(federation):
    """The noise is added to what the strategy returns: next round's clients must get that model, else the
    guarantee is gone without a word. Its deviation from the clipped mean has the wrapper's std z C / n."""
    fed = federation("fedavg", **UNEQUAL)
    z = 2.0
    wrapper = DifferentialPrivacyServerSideFixedClipping(fed.strategy, z, CLIP, num_sampled_clients=4)
    run_inprocess(wrapper, fed.manager, 2)
    round_1 = [c for c in fed.calls if c.server_round == 1]
    sent_1 = flat(parameters_to_ndarrays(round_1[0].ins.parameters))
    clipped = [flat(parameters_to_ndarrays(c.res.parameters)) for c in round_1]  # clipped in place by the wrapper
    mean = sent_1 + np.mean([m - sent_1 for m in clipped], axis=0)
    sent_2 = flat(parameters_to_ndarrays(next(c for c in fed.calls if c.server_round == 2).ins.parameters))
    assert np.std(sent_2 - mean) == pytest.approx(z * CLIP / 4, rel=0.02)
    assert np.allclose(flat(fed.globals[1]), sent_2)  # the round's record scored the model the clients got


def run_server_app(strategy, run_config: dict, mods: list, num_nodes: int = 4, workflow=None, rounds: int = 1):
    """A legacy ServerApp over a ClientApp with ``mods`` (Flower's client mods), in process."""
    app = ClientApp(client_fn=client_fn, mods=mods)
    grid = InProcessGrid(app, run_config, num_nodes)
    context = Context(run_id=0, node_id=1, node_config={}, state=RecordDict(), run_config=run_config)
    if workflow is None:
        ServerApp(config=ServerConfig(num_rounds=rounds), strategy=strategy)(grid, context)
        return
    server = ServerApp()

    @server.main()
    def main(grid, context):
        workflow(grid, LegacyContext(context=context, config=ServerConfig(num_rounds=rounds), strategy=strategy))

    server(grid, context)


def record_aggregated(strategy) -> list[np.ndarray]:
    """The models the strategy's ``aggregate_fit`` is handed (after any layer's clipping or unmasking)."""
    seen: list[np.ndarray] = []
    aggregate_fit = strategy.aggregate_fit

    def recording(server_round, results, failures):
        seen.extend(flat(parameters_to_ndarrays(res.parameters)) for _, res in results)
        return aggregate_fit(server_round, results, failures)

    strategy.aggregate_fit = recording
    return seen


def test_fedavg_inside_client_side_clipping_with_fixedclipping_mod_is_the_mean_of_the_clipped_updates(federation):
    fed = federation("fedavg", **UNEQUAL)
    sent = flat(fed.strategy.global_arrays())
    seen = record_aggregated(fed.strategy)
    wrapper = DifferentialPrivacyClientSideFixedClipping(fed.strategy, 0.0, CLIP, num_sampled_clients=4)
    run_server_app(wrapper, fed.run_config, [fixedclipping_mod])
    assert len(seen) == 4 and all(np.linalg.norm(m - sent) <= CLIP * (1 + 1e-5) for m in seen)  # the mod clipped
    assert np.allclose(flat(fed.strategy.global_arrays()), sent + np.mean([m - sent for m in seen], axis=0), atol=1e-6)


def test_fedavg_under_secagg_plus_sees_only_the_sum_and_ends_where_plain_averaging_ends(federation):
    plain = federation("fedavg", **UNEQUAL)
    plain.run(1)
    secure = federation("fedavg", **UNEQUAL)
    received = record_aggregated(secure.strategy)
    # max_weight: above every client's example count, or SecAgg+'s weighted sum may overflow its range.
    secagg = SecAggPlusWorkflow(num_shares=3, reconstruction_threshold=2, max_weight=10_000)
    run_server_app(secure.strategy, secure.run_config, [secaggplus_mod], workflow=DefaultWorkflow(fit_workflow=secagg))
    # The server got one vector, the (example-weighted) aggregate, in place of every client's model.
    assert len(received) == 4 and all(np.array_equal(r, received[0]) for r in received)
    assert secure.strategy.history[-1]["accepted"] == 4 and secure.strategy.history[-1]["failures"] == 0
    # SecAgg+ quantizes into [-8, 8] with 2^22 levels per client: plain averaging up to that resolution.
    difference = flat(secure.strategy.global_arrays()) - flat(plain.strategy.global_arrays())
    assert np.abs(difference).max() < 1e-4 and np.abs(difference).max() > 0, np.abs(difference).max()


@pytest.mark.parametrize("strategy", ["dgc", "dssgd"])
def test_sparse_strategies_refuse_flowers_layers_before_anything_is_sent(federation, strategy):
    fed = federation(strategy, **{"num-clients": 3})
    wrapper = DifferentialPrivacyServerSideFixedClipping(fed.strategy, 1.0, CLIP, num_sampled_clients=3)
    name = strategy.upper()
    refusal = f"{name} cannot run inside Flower's DifferentialPrivacyServerSideFixedClipping \\(client-level DP\\)"
    with pytest.raises(ValueError, match=refusal + ": its clients send sparse updates"):
        run_inprocess(wrapper, fed.manager, 1)
    workflow = DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(num_shares=3, reconstruction_threshold=2))
    with pytest.raises(ValueError, match=f"{name} cannot run inside Flower's SecAggPlusWorkflow \\(SecAgg\\+\\)"):
        run_server_app(fed.strategy, fed.run_config, [secaggplus_mod], num_nodes=3, workflow=workflow)
    assert fed.calls == []  # no client was asked to train


def test_a_robust_rule_is_refused_inside_a_layer(federation):
    fed = federation("fedavg", aggregation="median")
    wrapper = DifferentialPrivacyServerSideFixedClipping(fed.strategy, 1.0, CLIP, num_sampled_clients=4)
    with pytest.raises(ValueError, match="aggregation='median' cannot run inside Flower's Differential"):
        run_inprocess(wrapper, fed.manager, 1)


@pytest.mark.parametrize(("z", "rounds"), [(1.0, 1), (1.0, 5), (2.0, 20), (5.0, 3)])
def test_client_level_epsilon_is_the_rdp_bound_of_the_composed_gaussians(z, rounds):
    """What ``experiments.client_dp`` reports: T Gaussian releases of noise multiplier z, no amplification,
    computed here with Google's dp-accounting directly."""
    import dp_accounting
    from flwr_privacy.strategies.privacy import client_level_spent

    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(dp_accounting.GaussianDpEvent(z), rounds)
    expected = accountant.get_epsilon(1e-5)
    assert client_level_spent(z, rounds, 10, 1e-5).epsilon == pytest.approx(expected, rel=0.02)
    assert client_level_spent(z, rounds + 1, 10, 1e-5).epsilon > client_level_spent(z, rounds, 10, 1e-5).epsilon
