"""Sample-level DP-SGD on every algorithm's clients, in a real in-process federation on MNIST: the
model learns, the data-dependent loss stays home, each client's accountant lives in its context.state,
and the server's ledger, from the config alone, bounds what every client spent."""

from __future__ import annotations

import logging

import pytest
from flwr_privacy.clients.privacy import spent_epsilon
from opacus.accountants import RDPAccountant

from experiments.federation import dpsgd_plan, validate_run_config
from flwr_privacy.privacy.dpsgd import DPSGDPlan

DP = {"dpsgd.enabled": True, "dpsgd.noise-multiplier": 1.0, "dpsgd.max-grad-norm": 1.0, "batch-size": 50}


def opacus_epsilon(sigma: float, rate: float, steps: int, delta: float = 1e-5) -> float:
    """The same composition by another library's RDP accountant (Opacus's own)."""
    accountant = RDPAccountant()
    accountant.history = [(sigma, rate, steps)]
    return accountant.get_epsilon(delta)


def test_fedavg_with_dp_sgd_learns_and_reports_the_epsilon_its_clients_spent(federation):
    fed = federation("fedavg", **DP, **{"num-rounds": 3, "fraction-fit": 0.5, "lr": 0.5})
    history = fed.run()
    plan = fed.strategy.rounds.ledger.plan
    n = plan.min_examples
    steps = plan.steps(n)
    assert (n, steps) == (1000, 20)  # 4,000 examples over 4 clients, lots of 50
    participations = {p.cid: 0 for p in fed.proxies}
    for record in history[1:]:
        for cid in fed.sampled(record["round"]):
            participations[cid] += 1
        most = max(participations.values())
        assert record["epsilon_total_max"] == pytest.approx(opacus_epsilon(1.0, 50 / n, most * steps), rel=0.02)
        assert record["privacy_delta"] == 1e-5 and record["privacy_mechanism"] == "dp-sgd"
    assert history[-1]["test_accuracy"] > history[0]["test_accuracy"] + 0.3
    for call in fed.calls:
        assert "train_loss" not in call.res.metrics  # computed from the data: not released
    # each client's own accountant, in its context.state, holds exactly the rounds it took part in
    for proxy in fed.proxies:
        spent = spent_epsilon(proxy.context.state, DPSGDPlan.from_settings(fed.calls[0].ins.config, n), n)
        expected = opacus_epsilon(1.0, 50 / n, participations[proxy.cid] * steps) if participations[proxy.cid] else 0
        assert spent == pytest.approx(expected, rel=0.02)


def test_scatternet_features_and_a_linear_model_learn_under_dp_sgd_at_epsilon_3(federation):
    """Tramer & Boneh's setting (docs/results.md): each client's ScatterNet features, a linear model, Poisson
    lots, C = 0.1, the noise for epsilon 3 over the run; two rounds already learn far above chance."""
    fed = federation("fedavg", **{
        "features": "scatternet", "model": "scatter-linear", "num-rounds": 2, "batch-size": 200, "lr": 4.0,
        "momentum": 0.9, "dpsgd.enabled": True, "dpsgd.max-grad-norm": 0.1, "dpsgd.target-epsilon": 3.0,
    })
    history = fed.run()
    assert history[-1]["epsilon_total_max"] == pytest.approx(3.0, rel=0.01)
    assert history[-1]["test_accuracy"] > 0.8, history
    assert all(r["failures"] == 0 for r in history)


def test_a_client_over_its_budget_declines_and_the_global_model_stays(federation, caplog):
    fed = federation("fedavg", **DP, **{"num-rounds": 2, "dpsgd.max-epsilon": 2.7, "fraction-fit": 1.0})
    with caplog.at_level(logging.WARNING):
        history = fed.run()
    assert history[1]["accepted"] == 4 and history[2]["accepted"] == 0
    assert "privacy budget exhausted" in caplog.text and "declines to train" in caplog.text
    assert (fed.globals[2][0] == fed.globals[1][0]).all()
    # what the ledger charged: the one round released, not the declined one
    assert history[2]["epsilon_total_max"] == pytest.approx(history[1]["epsilon_total_max"])


def test_dssgd_with_dp_sgd_and_the_svt_composes_both(federation):
    fed = federation("dssgd", **DP, **{"num-rounds": 2, "fraction-fit": 1.0, "dssgd.dp": True, "dssgd.epsilon": 0.5})
    history = fed.run()
    plan = fed.strategy.rounds.ledger.plan
    gaussian = opacus_epsilon(1.0, 50 / plan.min_examples, 2 * plan.steps(plan.min_examples))
    assert history[-1]["epsilon_total_max"] == pytest.approx(gaussian + 2 * 0.5, rel=0.02)
    assert history[-1]["privacy_mechanism"] == "dp-sgd + svt (proven)"
    assert all(r["failures"] == 0 for r in history)


def test_dgc_with_dp_sgd_takes_its_local_steps_as_private_lots(federation):
    fed = federation("dgc", **DP, **{"num-rounds": 2, "local-steps": 3, "lr": 0.1, "dgc.final-sparsity": 0.99,
                                     "dgc.warmup-sparsities": ""})
    history = fed.run()
    plan = fed.strategy.rounds.ledger.plan
    assert plan.steps(plan.min_examples) == 3
    assert history[-1]["epsilon_total_max"] == pytest.approx(opacus_epsilon(1.0, 50 / plan.min_examples, 6), rel=0.02)
    assert all(r["failures"] == 0 for r in history) and history[-1]["accepted"] == 4
    assert all("train_loss" not in c.res.metrics for c in fed.calls)


def test_a_bigger_client_spends_less_than_the_server_reports():
    """The server charges everyone as the smallest client (the highest sampling rate): an upper bound."""
    from flwr_privacy.privacy.dpsgd import DPSGDConfig

    small = DPSGDPlan(DPSGDConfig(enabled=True), 50, 400, 1)
    big = DPSGDPlan(DPSGDConfig(enabled=True), 50, 4000, 1)
    for rounds in (1, 5, 50):
        assert opacus_epsilon(1.0, 50 / 4000, rounds * big.steps(4000)) < opacus_epsilon(
            1.0, 50 / 400, rounds * small.steps(400)
        )


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"dpsgd.noise-multiplier": 0.0}, "dpsgd.noise-multiplier"),
        ({"dpsgd.sigma": 1.0}, "dpsgd.sigma"),
        ({"dpsgd.delta": 2.0}, "dpsgd.delta"),
    ],
)
def test_config_errors_name_the_key(tmp_path, overrides, key):
    run_config = {"strategy": "fedavg", "output-dir": str(tmp_path), "dpsgd.enabled": True, **overrides}
    with pytest.raises(ValueError, match=key):
        validate_run_config(run_config)


def test_target_epsilon_sets_the_noise_for_the_whole_run(tmp_path):
    run_config = {"strategy": "fedavg", "output-dir": str(tmp_path), "num-rounds": 10, "batch-size": 50,
                  "dpsgd.enabled": True, "dpsgd.target-epsilon": 8.0, "model": "mlp"}
    cfg = validate_run_config(run_config)
    plan = dpsgd_plan(cfg, run_config)
    n = plan.min_examples
    assert opacus_epsilon(plan.config.noise_multiplier, 50 / n, 10 * plan.steps(n)) == pytest.approx(8.0, rel=0.02)


EXPERIMENTS = [
    "fedavg_mnist_tanhcnn_iid_dpsgd", "fedavg_mnist_scatterlinear_iid_dpsgd", "dgc_mnist_scatterlinear_iid_dpsgd",
    "dssgd_mnist_scatterlinear_iid_dpsgd",
]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize("target", [1.0, 3.0, 8.0])
def test_the_ledgers_epsilon_at_the_results_tables_settings_is_opacuss_and_the_target(experiment, target):
    """docs/results.md's DP-SGD tables (each experiment at epsilon 1, 3, 8; a client's share of full MNIST,
    6,000 examples): the noise derived for the target, composed over the run by the server's ledger
    (Flower's RDP accountant), is what Opacus's accountant reports for the same history, and within 1 %
    below the target."""
    from pathlib import Path

    import yaml
    from flwr_privacy.strategies.privacy import dpsgd_spent

    from flwr_privacy.privacy.dpsgd import DPSGDConfig, noise_for_target

    conf = Path(__file__).resolve().parents[2] / f"experiments/conf/experiment/{experiment}.yaml"
    cfg = yaml.safe_load(conf.read_text())
    n, rounds = 60000 // cfg["num_clients"], cfg["num_rounds"]
    assert cfg["fraction_fit"] == 1.0  # every client in every round: the ledger's worst case is each one's
    steps = cfg["local_steps"] if experiment.startswith("dgc") else None
    config = DPSGDConfig(enabled=True, max_grad_norm=cfg["dpsgd"]["max_grad_norm"], target_epsilon=target)
    plan = DPSGDPlan(config, cfg["batch_size"], n, cfg.get("local_epochs", 1), steps)
    sigma = noise_for_target(plan, rounds)
    charged = DPSGDPlan(DPSGDConfig(enabled=True, noise_multiplier=sigma), plan.batch_size, n, plan.local_epochs, steps)
    total = rounds * charged.steps(n)
    ledger = dpsgd_spent(charged, total).epsilon
    assert ledger == pytest.approx(opacus_epsilon(sigma, cfg["batch_size"] / n, total), rel=0.01)
    assert 0.99 * target <= ledger <= target * 1.001


def test_a_clients_accountant_state_stays_one_entry_per_event_and_composes_as_opacus():
    """Two hundred rounds of one DP-SGD step (DGC's) cost no replay of 199 earlier ones: the state in
    context.state merges same-event rounds, and its epsilon is the composition of all of them."""
    import json

    from flwr.common import RecordDict
    from flwr_privacy.clients.privacy import ACCOUNTANT_KEY, private_round

    from flwr_privacy.privacy.dpsgd import DPSGDConfig

    state = RecordDict()
    plan = DPSGDPlan(DPSGDConfig(enabled=True, noise_multiplier=1.3), batch_size=600, min_examples=6000, local_steps=1)
    for _ in range(200):
        with private_round(state, plan, 6000) as steps:
            assert steps == 1
    assert len(json.loads(str(state.config_records[ACCOUNTANT_KEY]["json"]))["compositions"]) == 1
    assert spent_epsilon(state, plan, 6000) == pytest.approx(opacus_epsilon(1.3, 0.1, 200), rel=0.01)
    # a round at another noise is another entry, and both count
    louder = DPSGDPlan(DPSGDConfig(enabled=True, noise_multiplier=2.0), 600, 6000, local_steps=1)
    with private_round(state, louder, 6000):
        pass
    accountant = RDPAccountant()
    accountant.history = [(1.3, 0.1, 200), (2.0, 0.1, 1)]
    assert spent_epsilon(state, plan, 6000) == pytest.approx(accountant.get_epsilon(1e-5), rel=0.01)
