"""DSSGD through Flower's own server loop (in process): training, upload bytes, rejected uploads,
privacy accounting, the sparse download and the participants' local models."""

import math

import numpy as np
import pytest
import torch
from flwr.common import FitRes, RecordDict, ndarrays_to_parameters, parameters_to_ndarrays
from flwr_privacy.clients.dssgd import MODEL_KEY
from flwr_privacy.clients.state import load_arrays
from flwr_privacy.strategies.legacy import parameters_nbytes

from experiments.federation import make_client, validate_run_config
from flwr_privacy.algorithms.dssgd import num_upload
from flwr_privacy.compression.topk import index_dtype_for
from flwr_privacy.wire import flatten, model_to_arrays

NUMEL = 199_210  # the 2NN: 784*200 + 200 + 200*200 + 200 + 200*10 + 10
GAMMA = 0.001


def sparse_nbytes(count):
    """Serialized bytes of ``count`` (uint32 index, float32 value) pairs: 8 bytes each plus two np.save headers."""
    arrays = [np.zeros(count, index_dtype_for(NUMEL)), np.zeros(count, np.float32)]
    nbytes = parameters_nbytes(ndarrays_to_parameters(arrays))
    assert 8 * count < nbytes <= 8 * count + 2 * 128
    return nbytes


def test_trains_and_uploads_a_theta_u_fraction(federation):
    fed = federation("dssgd", **{"dssgd.theta-u": 0.1, "dssgd.gamma": GAMMA})
    history = fed.run()
    accuracy = [r["test_accuracy"] for r in history]
    assert accuracy[0] < 0.2 and accuracy[-1] > 0.7 and accuracy[-1] > accuracy[1]
    c = num_upload(0.1, NUMEL)
    assert c == math.ceil(0.1 * NUMEL) == 19_921
    dense_bytes = parameters_nbytes(ndarrays_to_parameters(fed.strategy.initial_arrays))
    for record in history[1:]:
        assert record["clients"] == 4 and record["failures"] == 0 and "epsilon" not in record
        assert record["bytes_up"] == 4 * sparse_nbytes(c)
        assert record["bytes_down_per_client"] == dense_bytes  # theta_d = 1: the whole model


GOOD_INDICES, GOOD_VALUES = [0, 5, 70_000], [0.0005, -0.001, 0.00025]


def upload(indices=GOOD_INDICES, values=GOOD_VALUES, index_dtype=np.uint32, value_dtype=np.float32):
    return [np.array(indices, index_dtype), np.array(values, value_dtype)]


BAD_UPLOADS = {
    "above-gamma": (upload(values=[0.0005, 0.002, 0.0]), "outside [-gamma, gamma]"),
    "below-gamma": (upload(values=[0.0005, -0.5, 0.0]), "outside [-gamma, gamma]"),
    "nan": (upload(values=[0.0005, np.nan, 0.0]), "NaN or Inf"),
    "out-of-range": (upload(indices=[0, 5, NUMEL]), "out of range"),
    "negative": (upload(indices=[-3, 5, 7], index_dtype=np.int64), "negative index"),
    "duplicate": (upload(indices=[0, 5, 5]), "duplicate"),
    "lengths": (upload(values=[0.0005, 0.0]), "3 indices but 2 values"),
    "one-array": (upload()[:1], "expected 2 arrays"),
}


@pytest.mark.parametrize("kind", sorted(BAD_UPLOADS))
def test_bad_upload_is_rejected_and_touches_no_counter_while_a_good_one_applies(federation, reply, kind, caplog):
    fed = federation("dssgd", **{"dssgd.gamma": GAMMA})
    strategy = fed.strategy
    initial = strategy.rounds.server.params
    strategy.configure_fit(1, strategy.initialize_parameters(fed.manager), fed.manager)
    arrays, reason = BAD_UPLOADS[kind]
    good, bad = fed.proxies[:2]
    params, _ = strategy.aggregate_fit(1, [(good, reply(upload())), (bad, reply(arrays))], [])

    expected_params, expected_stats = initial.clone(), torch.zeros(NUMEL, dtype=torch.float64)
    expected_params[GOOD_INDICES] += torch.tensor(GOOD_VALUES, dtype=torch.float32)
    expected_stats[GOOD_INDICES] = 1
    assert torch.equal(strategy.rounds.server.params, expected_params)
    assert torch.equal(strategy.rounds.server.stats, expected_stats)
    assert torch.equal(flatten(parameters_to_ndarrays(params)), expected_params)
    strategy.evaluate(1, params)
    assert strategy.history[-1]["failures"] == 1 and strategy.history[-1]["accepted"] == 1
    assert f"client {bad.cid}: " in caplog.text and reason in caplog.text


def test_all_uploads_bad_leave_parameters_and_counters_untouched(federation, reply):
    fed = federation("dssgd", **{"dssgd.gamma": GAMMA})
    strategy = fed.strategy
    initial = strategy.rounds.server.params
    strategy.configure_fit(1, strategy.initialize_parameters(fed.manager), fed.manager)
    kinds = ["above-gamma", "nan", "duplicate", "out-of-range"]
    params, _ = strategy.aggregate_fit(1, [(p, reply(BAD_UPLOADS[k][0])) for p, k in zip(fed.proxies, kinds)], [])
    assert params is None
    assert torch.equal(strategy.rounds.server.params, initial)
    assert not strategy.rounds.server.stats.any()
    strategy.evaluate(1, strategy.initialize_parameters(fed.manager))
    assert strategy.history[-1]["failures"] == 4 and strategy.history[-1]["accepted"] == 0


def test_dp_rounds_report_epsilon_and_its_composition(federation):
    epsilon = 0.5
    fed = federation(
        "dssgd", **{"num-clients": 4, "fraction-fit": 0.5, "num-rounds": 4, "dssgd.dp": True, "dssgd.epsilon": epsilon}
    )
    history = fed.run()
    participations = {cid: 0 for cid in "0123"}
    for record in history[1:]:
        for cid in fed.sampled(record["round"]):
            participations[cid] += 1
        assert record["epsilon"] == pytest.approx(epsilon)  # the proven SVT spends exactly its budget
        assert record["epsilon_claimed"] == epsilon
        assert record["epsilon_total_max"] == pytest.approx(epsilon * max(participations.values()))
    totals = [r["epsilon_total_max"] for r in history[1:]]
    assert totals == sorted(totals) and totals[-1] > totals[0]
    assert max(participations.values()) >= 2


def test_paper_svt_reports_claimed_and_guaranteed_epsilon(federation):
    epsilon = 1.0
    fed = federation(
        "dssgd",
        **{"num-clients": 2, "num-rounds": 2, "dssgd.dp": True, "dssgd.epsilon": epsilon, "dssgd.svt-variant": "paper"},
    )
    history = fed.run()
    c = num_upload(0.1, NUMEL)
    for r, record in enumerate(history[1:], start=1):
        assert record["epsilon_claimed"] == epsilon
        assert record["epsilon"] == pytest.approx(epsilon * (1 / 2 + 4 / (9 * c)))  # docs: guaranteed_epsilon
        assert record["epsilon"] < epsilon
        assert record["epsilon_total_max"] == pytest.approx(r * record["epsilon"])  # both clients every round


def test_sparse_download_over_the_local_model_kept_in_context_state(federation):
    fed = federation("dssgd", **{"num-clients": 2, "num-rounds": 2, "dssgd.theta-d": 0.1})
    history = fed.run()
    dense_bytes = parameters_nbytes(ndarrays_to_parameters(fed.strategy.initial_arrays))
    download = sparse_nbytes(num_upload(0.1, NUMEL))
    assert all(r["failures"] == 0 and r["bytes_down_per_client"] == download for r in history[1:])
    assert download < dense_bytes / 4

    # The model a client starts round 2 from is its own local model with the downloaded entries
    # overwritten: replayed with its state lost, the same instruction gives another reply.
    (call,) = [c for c in fed.calls if c.server_round == 2 and c.cid == "0"]
    assert call.ins.config["download"] == "sparse"
    replayed, _ = fed.replay(call, call.state_before)
    assert replayed.parameters.tensors == call.res.parameters.tensors
    forgotten, _ = fed.replay(call, RecordDict())
    assert forgotten.parameters.tensors != call.res.parameters.tensors

    proxy = fed.manager.all()[call.cid]
    local = flatten(load_arrays(proxy.context.state, MODEL_KEY))
    server = fed.strategy.rounds.server.params
    assert not torch.equal(local, server)
    (ins,) = [ins for p, ins in fed.strategy.configure_fit(3, None, fed.manager) if p.cid == call.cid]
    client = make_client(fed.cfg, fed.run_config, proxy.context)
    client.download(parameters_to_ndarrays(ins.parameters), ins.config)
    started = flatten(model_to_arrays(client.model))
    downloaded = torch.zeros(NUMEL, dtype=torch.bool)
    downloaded[torch.from_numpy(parameters_to_ndarrays(ins.parameters)[0].astype(np.int64))] = True
    assert downloaded.sum() == num_upload(0.1, NUMEL)
    assert torch.equal(started[downloaded], server[downloaded])
    assert torch.equal(started[~downloaded], local[~downloaded])


@pytest.mark.parametrize(
    "overrides,key",
    [
        ({"dssgd.theta-u": 0}, "theta_u=0"),
        ({"dssgd.theta-u": 1.5}, "theta_u=1.5"),
        ({"dssgd.theta-d": 0.0}, "theta_d=0.0"),
        ({"dssgd.gamma": 0.0}, "gamma=0.0"),
        ({"dssgd.gamma": -0.001}, "gamma=-0.001"),
        ({"dssgd.dp": True, "dssgd.epsilon": 0.0}, "epsilon=0.0"),
        ({"dssgd.epsilon": -1.0}, "epsilon=-1.0"),
        ({"dssgd.selection": "smallest"}, "selection='smallest'"),
        ({"dssgd.svt-variant": "fast"}, "svt_variant='fast'"),
    ],
)
def test_config_errors_stop_before_training_and_name_the_key(tmp_path, overrides, key):
    run_config = {"strategy": "dssgd", "model": "mlp", "output-dir": str(tmp_path), **overrides}
    with pytest.raises(ValueError) as error:
        validate_run_config(run_config)
    assert key in str(error.value)


@pytest.mark.parametrize("spoof", [{"epsilon": 0.0, "partition_id": 1}, {"epsilon": 1e11, "epsilon_claimed": 0.0}])
def test_the_privacy_report_is_the_servers_own_whatever_a_client_claims(federation, spoof):
    """Computed from the configured mechanism for each node that replied: a client reporting epsilon 0 under
    another's partition id, or 1e11, changes nothing, and an upload rejected after release is still charged."""
    epsilon = 0.5
    fed = federation("dssgd", **{"num-clients": 2, "num-rounds": 2, "dssgd.dp": True, "dssgd.epsilon": epsilon})
    liar, rejected = fed.proxies
    fit, fit_rejected = liar.fit, rejected.fit

    def lying_fit(ins, timeout, group_id):
        res = fit(ins, timeout, group_id)
        res.metrics = {**res.metrics, **spoof}
        return res

    def oversized_fit(ins, timeout, group_id):  # released, then refused by the server (values beyond gamma)
        res = fit_rejected(ins, timeout, group_id)
        arrays = parameters_to_ndarrays(res.parameters)
        arrays[1] = arrays[1] * 100
        return FitRes(res.status, ndarrays_to_parameters(arrays), res.num_examples, res.metrics)

    liar.fit, rejected.fit = lying_fit, oversized_fit
    history = fed.run()
    assert [r["epsilon"] for r in history[1:]] == pytest.approx([epsilon, epsilon])
    assert [r["epsilon_total_max"] for r in history[1:]] == pytest.approx([epsilon, 2 * epsilon])
    assert fed.strategy.rounds.ledger.pure_epsilon == pytest.approx({liar.cid: 2 * epsilon, rejected.cid: 2 * epsilon})
    assert all(r["failures"] == 1 for r in history[1:])  # the oversized upload was refused, and charged
