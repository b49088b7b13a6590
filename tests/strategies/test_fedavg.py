"""FedAvg through Flower's own server loop (in process): training, byte counts and bad replies."""

import numpy as np
import pytest
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.client_manager import SimpleClientManager
from flwr_privacy.strategies.legacy import parameters_nbytes

from experiments.client_app import client_fn
from experiments.federation import make_strategy, validate_run_config
from experiments.inprocess import make_federation, run_inprocess


def run_config(tmp_path, **overrides):
    config = {
        "strategy": "fedavg",
        "model": "mlp",
        "num-clients": 4,
        "fraction-fit": 1.0,
        "num-rounds": 3,
        "batch-size": 20,
        "lr": 0.1,
        "output-dir": str(tmp_path),
    }
    config.update(overrides)
    return config


def build(tmp_path, **overrides):
    rc = run_config(tmp_path, **overrides)
    cfg = validate_run_config(rc)
    return make_strategy(cfg, rc), make_federation(client_fn, rc, cfg.num_clients)


def test_accuracy_rises_and_bytes_match_the_serialized_arrays(tmp_path):
    strategy, manager = build(tmp_path)
    run_inprocess(strategy, manager, 3)
    acc = [r["test_accuracy"] for r in strategy.history]
    assert [r["round"] for r in strategy.history] == [0, 1, 2, 3]
    assert acc[0] < 0.2 and acc[-1] > 0.85 and acc[-1] > acc[1] - 0.02
    model_bytes = parameters_nbytes(ndarrays_to_parameters(strategy.initial_arrays))
    array_bytes = sum(a.nbytes for a in strategy.initial_arrays)
    assert array_bytes == 4 * 199_210
    for record in strategy.history[1:]:
        assert record["clients"] == 4 and record["failures"] == 0
        assert record["bytes_down"] == 4 * model_bytes
        assert record["bytes_up"] == 4 * model_bytes  # clients return float32 models of the same shapes
        assert array_bytes < record["bytes_up_per_client"] < array_bytes + 1024


def test_float16_wire_halves_the_bytes(tmp_path):
    strategy, manager = build(tmp_path, **{"wire-dtype": "float16", "num-rounds": 1})
    run_inprocess(strategy, manager, 1)
    record = strategy.history[1]
    assert record["failures"] == 0
    assert record["bytes_up_per_client"] == pytest.approx(2 * 199_210, rel=0.01)
    assert record["test_accuracy"] > 0.7


def good_arrays(strategy):
    return [a + 0.01 for a in strategy.initial_arrays]


def corrupt(strategy, kind):
    arrays = good_arrays(strategy)
    if kind == "count":
        return arrays[:-1]
    if kind == "shape":
        arrays[0] = arrays[0][:, :10]
    elif kind == "dtype":
        arrays[1] = arrays[1].astype(np.float64)
    elif kind == "nan":
        arrays[2][0, 0] = np.nan
    elif kind == "inf":
        arrays[3][0] = np.inf
    return arrays


@pytest.mark.parametrize("kind", ["count", "shape", "dtype", "nan", "inf", "zero-examples"])
def test_bad_reply_is_that_clients_failure_and_the_rest_aggregates(tmp_path, kind, caplog):
    strategy, manager = build(tmp_path)
    proxies = sorted(manager.all().values(), key=lambda p: p.cid)
    strategy.configure_fit(1, strategy.initialize_parameters(manager), manager)
    ok = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(good_arrays(strategy)), 100, {})
    bad_arrays = good_arrays(strategy) if kind == "zero-examples" else corrupt(strategy, kind)
    bad = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(bad_arrays), 0 if kind == "zero-examples" else 100, {})
    params, _ = strategy.aggregate_fit(1, [(proxies[0], ok), (proxies[1], bad)], [RuntimeError("lost")])
    result = parameters_to_ndarrays(params)
    assert all(np.allclose(r, g) for r, g in zip(result, good_arrays(strategy)))
    strategy.evaluate(1, params)
    assert strategy.history[-1]["failures"] == 2 and strategy.history[-1]["accepted"] == 1
    assert "rejected" in caplog.text


def test_all_bad_replies_leave_the_global_model_unchanged(tmp_path):
    strategy, manager = build(tmp_path)
    proxy = next(iter(manager.all().values()))
    strategy.configure_fit(1, strategy.initialize_parameters(manager), manager)
    bad = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(corrupt(strategy, "nan")), 100, {})
    params, _ = strategy.aggregate_fit(1, [(proxy, bad)], [])
    assert params is None  # Flower keeps the current global model


def test_more_clients_sampled_than_connected_is_a_clear_error(tmp_path):
    rc = run_config(tmp_path, **{"min-fit-clients": 4})
    strategy = make_strategy(validate_run_config(rc), rc)
    strategy.sample_timeout = 1
    manager = SimpleClientManager()
    for proxy in list(make_federation(client_fn, rc, 4).all().values())[:2]:
        manager.register(proxy)
    with pytest.raises(ValueError, match="min-fit-clients=4 samples more clients than exist"):
        strategy.configure_fit(1, strategy.initialize_parameters(manager), manager)


def test_the_server_evaluates_every_k_rounds_and_always_the_last(tmp_path):
    strategy, manager = build(tmp_path, **{"num-rounds": 7, "evaluate-every": 3})
    run_inprocess(strategy, manager, 7)
    scored = [r["round"] for r in strategy.history if r["test_accuracy"] is not None]
    assert scored == [0, 3, 6, 7]


def test_the_average_weighs_each_client_by_its_examples(tmp_path):
    strategy, manager = build(tmp_path)
    a, b = sorted(manager.all().values(), key=lambda p: p.cid)[:2]
    strategy.configure_fit(1, strategy.initialize_parameters(manager), manager)
    small = [x.copy() for x in strategy.initial_arrays]
    large = [x + 0.01 for x in strategy.initial_arrays]
    replies = [
        (a, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(small), 100, {})),
        (b, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(large), 300, {})),
    ]
    params, _ = strategy.aggregate_fit(1, replies, [])
    expected = [x + 0.0075 for x in strategy.initial_arrays]  # 300 / (100 + 300) of the step, not 1 / 2
    assert all(np.allclose(x, e, atol=1e-6) for x, e in zip(parameters_to_ndarrays(params), expected))


def test_a_float16_uplink_keeps_a_change_below_float16_spacing(tmp_path):
    """float16 spacing at 1.0 is 1e-3: a 2e-4 step sent as a model would round away on the server."""
    import torch
    from flwr_privacy.clients import FedAvgClient
    from flwr_privacy.strategies.base import Accepted
    from flwr_privacy.strategies.fedavg import FedAvgRounds

    from flwr_privacy.wire import model_to_arrays

    model = torch.nn.Linear(4, 1)
    torch.nn.init.ones_(model.weight), torch.nn.init.ones_(model.bias)

    def step(m):
        with torch.no_grad():
            for p in m.parameters():
                p.add_(2e-4)
        return 0.0

    client = FedAvgClient(model, [(torch.zeros(1, 4), torch.zeros(1, dtype=torch.long))], train_fn=step, device="cpu")
    rounds = FedAvgRounds(model_to_arrays(model), "float16")
    for server_round in (1, 2):
        ((_, config),) = rounds.configure(server_round, ["0"])
        arrays, n, _ = client.fit(rounds.global_arrays(), config)
        assert all(a.dtype == np.float16 for a in arrays)
        rounds.aggregate(server_round, [Accepted("0", rounds.decode(arrays), n, {})])
    for array in rounds.global_arrays():
        assert array.dtype == np.float32
        np.testing.assert_allclose(array, 1 + 4e-4, rtol=0, atol=1e-6)


def test_the_inprocess_backend_fits_one_client_at_a_time(tmp_path):
    """Concurrent clients in one CPython 3.11 process can trip python/cpython#106905 (torch parses source)."""
    import threading
    import time

    strategy, manager = build(tmp_path, **{"num-rounds": 1})
    active, most = [0], [0]
    lock = threading.Lock()
    for proxy in manager.all().values():
        fit = proxy.fit

        def counting_fit(ins, timeout, group_id, fit=fit):
            with lock:
                active[0] += 1
                most[0] = max(most[0], active[0])
            time.sleep(0.05)
            try:
                return fit(ins, timeout, group_id)
            finally:
                with lock:
                    active[0] -= 1

        proxy.fit = counting_fit
    run_inprocess(strategy, manager, 1)
    assert most[0] == 1 and strategy.history[-1]["accepted"] == 4


def test_a_400_mb_reply_is_refused_before_it_is_decoded(tmp_path, caplog):
    import io
    import tracemalloc

    from flwr.common import Parameters

    strategy, manager = build(tmp_path)
    good, flood = sorted(manager.all().values(), key=lambda p: p.cid)[:2]
    strategy.configure_fit(1, strategy.initialize_parameters(manager), manager)
    blob = io.BytesIO()
    np.save(blob, np.zeros(100_000_000, np.float32), allow_pickle=False)  # a valid 400 MB array
    huge = Parameters(tensors=[blob.getvalue()], tensor_type="numpy.ndarray")
    del blob
    replies = [
        (good, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(good_arrays(strategy)), 100, {})),
        (flood, FitRes(Status(Code.OK, ""), huge, 100, {})),
    ]
    tracemalloc.start()
    try:
        params, _ = strategy.aggregate_fit(1, replies, [])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50e6, f"{peak / 1e6:.0f} MB allocated while refusing it"
    assert all(np.allclose(r, g) for r, g in zip(parameters_to_ndarrays(params), good_arrays(strategy)))
    assert "the reply carries 400000128 bytes of arrays, over this round's" in caplog.text


def test_example_counts_above_ten_times_the_median_are_cut_to_it():
    from flwr_privacy.strategies.base import Accepted, bound_weights

    accepted = [Accepted(str(i), None, n, {}) for i, n in enumerate([100, 300, 250, 10**12, 2000])]
    assert [a.num_examples for a in bound_weights(accepted, 10.0)] == [100, 300, 250, 3000, 2000]  # median 300
    two = [Accepted("a", None, 10**9, {}), Accepted("b", None, 50, {})]
    assert [a.num_examples for a in bound_weights(two, 10.0)] == [500, 50]  # median_low: the smaller claim
