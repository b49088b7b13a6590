"""Robust aggregation (``aggregation=``) and the rollback of a round whose model is not finite.

Each test hands a strategy replies through Flower's legacy API, as its server loop would, and reads the
global model it keeps; the "mean" run of the same replies is the reference a robust rule must differ from.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

from experiments.client_app import client_fn
from experiments.federation import make_strategy, validate_run_config
from experiments.inprocess import make_federation


def build(tmp_path, strategy="fedavg", **overrides):
    rc = {
        "strategy": strategy,
        "model": "mlp",
        "num-clients": 5,
        "fraction-fit": 1.0,
        "num-rounds": 1,
        "lr": 0.1,
        "output-dir": str(tmp_path),
        **overrides,
    }
    cfg = validate_run_config(rc)
    manager = make_federation(client_fn, rc, cfg.num_clients)
    strategy = make_strategy(cfg, rc)
    strategy.configure_fit(1, strategy.initialize_parameters(manager), manager)
    return strategy, sorted(manager.all().values(), key=lambda p: int(p.cid))


def fit_res(arrays, num_examples=100):
    return FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), num_examples, {})


def fedavg_round(tmp_path, offsets, examples=None, **overrides):
    """One FedAvg round in which client k sends the initial model plus offsets[k] everywhere."""
    strategy, proxies = build(tmp_path, **overrides)
    examples = examples or [100] * len(offsets)
    replies = [
        (proxy, fit_res([a + offset for a in strategy.initial_arrays], n))
        for proxy, offset, n in zip(proxies, offsets, examples)
    ]
    params, _ = strategy.aggregate_fit(1, replies, [])
    change = [g - a for g, a in zip(parameters_to_ndarrays(params), strategy.initial_arrays)]
    return np.concatenate([c.reshape(-1) for c in change])


def test_fedavg_median_is_the_coordinate_wise_median_of_the_models(tmp_path):
    offsets = [0.01, 0.02, 0.03, 0.04, 0.2]
    assert fedavg_round(tmp_path, offsets) == pytest.approx(0.06, abs=1e-5)  # the mean, dragged by 0.2
    assert fedavg_round(tmp_path, offsets, aggregation="median") == pytest.approx(0.03, abs=1e-5)


def test_fedavg_trimmed_mean_cuts_beta_of_the_clients_at_each_end_and_ignores_example_counts(tmp_path):
    offsets = [-0.2, 0.01, 0.02, 0.06, 0.2]
    trimmed = fedavg_round(tmp_path, offsets, [100, 100, 100, 100, 10**6], aggregation="trimmed_mean")
    assert trimmed == pytest.approx(0.03, abs=1e-5)  # mean of 0.01, 0.02, 0.06
    no_cut = fedavg_round(tmp_path, offsets, aggregation="trimmed_mean", **{"trim-fraction": 0.0})
    assert no_cut == pytest.approx(0.018, abs=1e-5)


def test_fedavg_norm_bound_clips_each_change_to_the_rounds_median_norm(tmp_path):
    offsets = [0.01, 0.01, 0.01, 0.01, 0.2]
    bounded = fedavg_round(tmp_path, offsets, aggregation="norm_bound")
    assert bounded == pytest.approx(0.01, abs=1e-6)  # the outlier's change cut to the median's length
    assert fedavg_round(tmp_path, offsets) == pytest.approx(0.048, abs=1e-5)


def sparse_replies(strategy, proxies, uploads):
    """Sparse replies (indices, values) through the strategy's own codec, no buffers (the MLP has none)."""
    codec = strategy.rounds.sparse_codec if hasattr(strategy.rounds, "sparse_codec") else strategy.rounds.codec
    return [
        (proxy, fit_res(codec.encode(torch.tensor(idx), torch.tensor(values, dtype=torch.float32), [])))
        for proxy, (idx, values) in zip(proxies, uploads)
    ]


# Three clients send entries 0-2; the third flips their sign (same norm, so a norm bound alone keeps it).
HONEST, FLIPPED = ([0, 1, 2], [1e-4, 1e-4, 1e-4]), ([0, 1, 2], [-1e-4, -1e-4, -1e-4])


@pytest.mark.parametrize("strategy", ["dgc", "dssgd"])
def test_sparse_median_takes_each_entry_over_the_clients_that_sent_it(tmp_path, strategy):
    def change(**overrides):
        built, proxies = build(tmp_path, strategy, **{"num-clients": 3, **overrides})
        before = built.global_arrays()[0].reshape(-1)[:3].copy()
        params, _ = built.aggregate_fit(1, sparse_replies(built, proxies, [HONEST, HONEST, FLIPPED]), [])
        assert built.history == [] and params is not None
        return parameters_to_ndarrays(params)[0].reshape(-1)[:3] - before

    mean, median = change(), change(aggregation="median")
    # DGC steps -lr * the mean update (1/3 of 1e-4 here); DSSGD adds the three uploads (1e-4 in all).
    assert np.allclose(median, 3 * mean, rtol=1e-3), (mean, median)
    assert np.all(np.abs(median) > 2.9 * np.abs(mean))


def test_a_sparse_entry_one_client_alone_sent_is_no_longer_than_an_honest_update(tmp_path):
    built, proxies = build(tmp_path, "dgc", **{"num-clients": 3, "aggregation": "median"})
    lone = ([0, 1, 2, 7], [1e-4, 1e-4, 1e-4, 1.0])  # a huge value where nobody else sent anything
    before = built.global_arrays()[0].reshape(-1)[7]
    params, _ = built.aggregate_fit(1, sparse_replies(built, proxies, [HONEST, HONEST, lone]), [])
    moved = abs(parameters_to_ndarrays(params)[0].reshape(-1)[7] - before)
    assert moved <= 0.1 * np.sqrt(3) * 1e-4 / 3 + 1e-9  # lr * the median norm, weighed by 1 sender of 3


def test_a_bad_aggregation_option_is_refused_before_training(tmp_path):
    with pytest.raises(ValueError, match="aggregation='bulyan' is unknown; allowed: \\['mean', 'median'"):
        build(tmp_path, aggregation="bulyan")
    with pytest.raises(ValueError, match="num-malicious-clients=-1 must be >= 0"):
        build(tmp_path, aggregation="krum", **{"num-malicious-clients": -1})
    with pytest.raises(ValueError, match="aggregation=krum with num-malicious-clients=2 needs at least 7 clients per"):
        build(tmp_path, aggregation="krum", **{"num-malicious-clients": 2, "num-clients": 10, "fraction-fit": 0.6})
    with pytest.raises(ValueError, match="trim-fraction=0.5 must be in \\[0, 0.5\\)"):
        build(tmp_path, **{"trim-fraction": 0.5})
    from flwr_privacy.strategies import FedAvg

    with pytest.raises(ValueError, match="trim_fraction=-0.1 must be in"):
        FedAvg(initial_arrays=[np.zeros(3, np.float32)], aggregation="trimmed_mean", trim_fraction=-0.1)
    with pytest.raises(ValueError, match="num_malicious_clients=1.5 must be an integer >= 0"):
        FedAvg(initial_arrays=[np.zeros(3, np.float32)], aggregation="krum", num_malicious_clients=1.5)


@pytest.mark.parametrize("num_malicious", [1, 2])
def test_fedavg_krum_keeps_what_flowers_multi_krum_keeps(tmp_path, num_malicious):
    """Multi-Krum over the clients' changes: the mean of the n - f updates Flower's ``aggregate_krum`` keeps."""
    from flwr.server.strategy.aggregate import aggregate_krum

    offsets = [0.01, 0.012, 0.02, 0.025, -0.03, 0.1, 0.05]
    options = {"num-clients": 7, "aggregation": "krum", "num-malicious-clients": num_malicious}
    change = fedavg_round(tmp_path, offsets, **options)
    flower = aggregate_krum([([np.array([o])], 1) for o in offsets], num_malicious, len(offsets) - num_malicious)
    assert change == pytest.approx(float(flower[0][0]), abs=1e-6)
    if num_malicious == 1:  # the far one (0.1) left out: the mean of the other six
        assert change == pytest.approx(0.0145, abs=1e-6)
    assert fedavg_round(tmp_path, offsets, **{"num-clients": 7}) == pytest.approx(0.026714, abs=1e-5)  # plain mean


@pytest.mark.parametrize("seed", range(20))
def test_krums_choice_is_flowers_on_random_updates(seed):
    """The rows ``krum_keep`` keeps average to what Flower's ``aggregate_krum`` returns, for every f."""
    from flwr.server.strategy.aggregate import aggregate_krum
    from flwr_privacy.strategies.robust import krum_keep

    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 12))
    rows = rng.standard_normal((n, 40)) * rng.uniform(0.1, 3, (n, 1))
    for f in range(n):
        kept = krum_keep(rows, f)
        flower = aggregate_krum([([row], 1) for row in rows], f, max(1, n - f))[0]
        assert len(kept) == max(1, n - f) and np.allclose(rows[kept].mean(axis=0), flower), (n, f, kept)


@pytest.mark.parametrize("strategy", ["dgc", "dssgd"])
@pytest.mark.parametrize(
    "flipped",
    [FLIPPED, ([3, 4, 5], [-1e-4] * 3), ([0, 1, 2, 3, 4, 5], [1e-4] * 3 + [-1e-4] * 3)],
    ids=["same entries", "disjoint", "honest where shared"],
)
def test_sparse_krum_leaves_out_the_update_that_points_away_whatever_its_entries(tmp_path, caplog, strategy, flipped):
    """Krum compares whole sparse updates as the dense vectors they stand for: a flipped update of an honest
    norm is left out (logged, counted in ``left_out``, not a failure), sharing entries with the honest ones
    or not, and the algorithm's own average runs over the three honest updates."""

    def change(**overrides):
        built, proxies = build(tmp_path, strategy, **{"num-clients": 5, **overrides})
        before = built.global_arrays()[0].reshape(-1)[:6].copy()
        with caplog.at_level(logging.INFO):
            replies = sparse_replies(built, proxies, [flipped, HONEST, HONEST, HONEST, HONEST])
            params, _ = built.aggregate_fit(1, replies, [])
        built.evaluate(1, params)
        return parameters_to_ndarrays(params)[0].reshape(-1)[:6] - before, built.history[-1]

    (mean, _), (krum, record) = change(), change(aggregation="krum")
    # DGC steps -lr * the mean update: 1e-4 over the four honest ones under Krum. DSSGD adds the uploads:
    # 4e-4 under Krum, the flipped one taken off the plain run's.
    honest = -0.1 * 1e-4 if strategy == "dgc" else 4e-4
    assert np.allclose(krum[:3], honest, rtol=1e-3), (mean, krum)
    assert np.allclose(krum[3:], 0)
    assert not np.allclose(mean[:3], honest, rtol=0.1) or not np.allclose(mean[3:], 0)
    assert record["left_out"] == 1 and record["accepted"] == 4 and record["failures"] == 0
    assert "round 1: Krum left out the updates of 0" in caplog.text  # first: ties would not pick it


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_an_aggregate_that_is_not_finite_is_rolled_back_naming_the_clients(tmp_path, caplog):
    # float32 values near the type's maximum, let past the norm bound: their trimmed mean overflows to inf.
    strategy, proxies = build(tmp_path, **{"num-clients": 2, "aggregation": "trimmed_mean", "trim-fraction": 0.0})
    strategy.rounds.max_update_ratio = 1e45
    huge = [np.full_like(a, 3.4e38) for a in strategy.initial_arrays]
    with caplog.at_level(logging.WARNING):
        params, _ = strategy.aggregate_fit(1, [(p, fit_res(huge)) for p in proxies], [])
        strategy.evaluate(1, params)
    assert params is None  # Flower keeps its model, and so does the strategy
    assert all(np.array_equal(g, a) for g, a in zip(strategy.global_arrays(), strategy.initial_arrays))
    record = strategy.history[-1]
    assert record["rolled_back"] == 1 and record["accepted"] == 0 and np.isfinite(record["test_loss"])
    expected = "round 1 rolled back to the previous global model: the aggregate is not finite; clients aggregated: 0, 1"
    assert expected in caplog.text


def test_a_model_whose_evaluation_is_not_finite_is_rolled_back_and_scored_again(tmp_path, caplog):
    strategy, proxies = build(tmp_path, **{"num-clients": 2})
    strategy.rounds.max_update_ratio = 1e45
    honest = [a + 0.01 for a in strategy.initial_arrays]
    huge = [np.full_like(a, 1e30) for a in strategy.initial_arrays]  # finite, but the logits overflow
    params, _ = strategy.aggregate_fit(1, [(proxies[0], fit_res(honest)), (proxies[1], fit_res(huge))], [])
    assert params is not None
    with caplog.at_level(logging.WARNING):
        loss, _ = strategy.evaluate(1, params)
    assert np.isfinite(loss)
    assert all(np.array_equal(g, a) for g, a in zip(strategy.global_arrays(), strategy.initial_arrays))
    assert strategy.history[-1]["rolled_back"] == 1 and strategy.history[-1]["accepted"] == 0
    assert "the server's evaluation of the new model is not finite; clients aggregated: 0, 1" in caplog.text
