"""DGC through Flower's own server loop (in process): training at 99.9 % sparsity, the bytes it sends,
malformed replies, client memory in context.state, the sparse downlink and the dense baseline."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flwr.common import RecordDict, ndarrays_to_parameters, parameters_to_ndarrays
from flwr_privacy.clients.dgc import MEMORY_KEY, MODEL_KEY
from flwr_privacy.clients.state import load_arrays
from flwr_privacy.strategies.legacy import parameters_nbytes

from experiments.federation import client_data, validate_run_config
from flwr_privacy.algorithms.dgc import kept_count
from flwr_privacy.compression.topk import index_dtype_for
from flwr_privacy.models import build_model
from flwr_privacy.wire import flatten, model_to_arrays

NUMEL = 199_210  # the 2NN: 784*200 + 200 + 200*200 + 200 + 200*10 + 10


def dgc(**overrides):
    """Run-config overrides for DGC with a short warm-up to 99.9 %."""
    return {"dgc.final-sparsity": 0.999, "dgc.warmup-sparsities": "0.75,0.9375", **overrides}


def sparse_upload_nbytes(shapes, sparsity):
    """Serialized bytes of one client's top-k upload: k (index, value) pairs plus one np.save header per array.
    Tensors of one dimension (the biases) go whole, as the reference sends them."""
    k = sum(int(np.prod(s)) if len(s) == 1 else kept_count(int(np.prod(s)), sparsity) for s in shapes)
    arrays = [np.zeros(k, index_dtype_for(NUMEL)), np.zeros(k, np.float32)]
    nbytes = parameters_nbytes(ndarrays_to_parameters(arrays))
    assert k * (4 + 4) < nbytes <= k * (4 + 4) + 2 * 128  # uint32 index + float32 value, two headers
    return nbytes


def test_trains_at_999_sparsity_and_uploads_k_entries(federation):
    fed = federation("dgc", **dgc(**{"num-rounds": 12, "local-steps": 10, "lr": 0.05}))
    history = fed.run()
    accuracy = [r["test_accuracy"] for r in history]
    assert [r["round"] for r in history] == list(range(13))
    assert [r["sparsity"] for r in history[1:4]] == [0.75, 0.9375, 0.999]
    assert accuracy[0] < 0.2 and accuracy[-1] > 0.5 and min(accuracy[3:]) > 0.4
    assert all(r["clients"] == 4 and r["failures"] == 0 for r in history[1:])

    expected = sparse_upload_nbytes([a.shape for a in fed.strategy.initial_arrays], 0.999)
    final = [r for r in history[1:] if r["sparsity"] == 0.999]
    assert len(final) == 10
    assert all(r["bytes_up"] == 4 * expected for r in final)
    assert expected == 5128  # 609 entries: 157 + 200 + 40 + 200 + 2 + 10 over the six tensors
    dense_upload = parameters_nbytes(ndarrays_to_parameters([np.zeros(NUMEL, np.float32)]))
    assert dense_upload / expected > 150
    assert history[1]["bytes_up_per_client"] > history[2]["bytes_up_per_client"] > expected


def good_update(indices=(0, 5, 70_000), values=(0.5, -1.0, 2.0)):
    return [np.array(indices, np.uint32), np.array(values, np.float32)]


def malformed(kind):
    """(arrays, num_examples, words the rejection's log names) for one kind of bad reply."""
    indices, values = good_update()
    if kind == "out-of-range":
        return [np.array([0, NUMEL], np.uint32), values[:2]], 1000, "out of range"
    if kind == "negative":
        return [np.array([-1, 5, 7], np.int64), values], 1000, "negative index"
    if kind == "duplicate":
        return [np.array([5, 5, 7], np.uint32), values], 1000, "duplicate"
    if kind == "lengths":
        return [indices, values[:2]], 1000, "3 indices but 2 values"
    if kind == "float64":
        return [indices, values.astype(np.float64)], 1000, "expected dtype float32"
    if kind == "nan":
        return [indices, np.array([0.5, np.nan, 2.0], np.float32)], 1000, "NaN or Inf"
    if kind == "inf":
        return [indices, np.array([0.5, -np.inf, 2.0], np.float32)], 1000, "NaN or Inf"
    if kind == "too-many":  # refused on its size, before it is decoded
        return [np.arange(NUMEL + 1, dtype=np.uint32), np.zeros(NUMEL + 1, np.float32)], 1000, "bytes of arrays, over"
    if kind == "over-k":  # well-formed, small, but more than the round's k = 199 + 410 biases sent whole
        return [np.arange(700, dtype=np.uint32), np.ones(700, np.float32)], 1000, "700 entries sent, more than"
    if kind == "one-array":
        return [indices], 1000, "expected 2 arrays"
    if kind == "three-arrays":
        return [indices, values, values], 1000, "expected 2 arrays"
    if kind == "zero-examples":
        return [indices, values], 0, "num_examples=0"
    if kind == "negative-examples":
        return [indices, values], -5, "num_examples=-5"
    raise AssertionError(kind)


KINDS = [
    "out-of-range", "negative", "duplicate", "lengths", "float64", "nan", "inf",
    "too-many", "over-k", "one-array", "three-arrays", "zero-examples", "negative-examples",
]  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
def test_malformed_reply_is_that_clients_failure_and_the_good_one_aggregates(federation, reply, kind, caplog):
    fed = federation("dgc", **dgc(**{"dgc.warmup-sparsities": ""}))
    strategy = fed.strategy
    strategy.configure_fit(1, strategy.initialize_parameters(fed.manager), fed.manager)
    initial = flatten(strategy.initial_arrays)
    arrays, num_examples, reason = malformed(kind)
    good, bad = fed.proxies[:2]
    params, _ = strategy.aggregate_fit(1, [(good, reply(good_update())), (bad, reply(arrays, num_examples))], [])

    expected = initial.clone()
    expected[[0, 5, 70_000]] -= 0.05 * torch.tensor([0.5, -1.0, 2.0])  # the good update alone, lr 0.05
    assert torch.equal(flatten(parameters_to_ndarrays(params)), expected)
    strategy.evaluate(1, params)
    assert strategy.history[-1]["failures"] == 1 and strategy.history[-1]["accepted"] == 1
    assert f"client {bad.cid}: " in caplog.text and reason in caplog.text


def test_all_replies_malformed_leaves_the_global_model_unchanged(federation, reply):
    fed = federation("dgc", **dgc(**{"dgc.warmup-sparsities": ""}))
    strategy = fed.strategy
    strategy.configure_fit(1, strategy.initialize_parameters(fed.manager), fed.manager)
    replies = []
    for proxy, kind in zip(fed.proxies, ["negative", "nan", "lengths", "zero-examples"]):
        arrays, num_examples, _ = malformed(kind)
        replies.append((proxy, reply(arrays, num_examples)))
    params, _ = strategy.aggregate_fit(1, replies, [RuntimeError("connection lost")])
    assert params is None  # Flower keeps the current global model
    assert all(np.array_equal(a, b) for a, b in zip(strategy.global_arrays(), strategy.initial_arrays))
    strategy.evaluate(1, strategy.initialize_parameters(fed.manager))
    assert strategy.history[-1]["failures"] == 5 and strategy.history[-1]["accepted"] == 0


def memory(state):
    return load_arrays(state, MEMORY_KEY)


def same(a, b):
    return a is not None and b is not None and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_memory_persists_in_context_state_across_rounds_a_client_sits_out(federation):
    fed = federation("dgc", **dgc(**{"fraction-fit": 0.5, "num-rounds": 6, "local-steps": 2}))
    fed.run()
    returns = []  # (round, cid) of clients sampled again after sitting out at least the previous round
    for r in range(1, 7):
        sampled = fed.sampled(r)
        assert len(sampled) == 2
        for cid in ("0", "1", "2", "3"):
            before, after = memory(fed.states[r - 1][cid]), memory(fed.states[r][cid])
            if cid not in sampled:
                assert (before is None and after is None) or same(before, after)  # untouched while sitting out
                continue
            assert after is not None and not same(before, after)
            if before is not None and cid not in fed.sampled(r - 1):
                returns.append((r, cid))
    assert returns, "the seeded sampling should bring some client back after a pause"

    for r, cid in returns:
        (call,) = [c for c in fed.calls if c.server_round == r and c.cid == cid]
        assert same(memory(call.state_before), memory(fed.states[r - 1][cid]))
        # Its reply is a function of the memory it kept: replayed from that state it is the same,
        # from an empty state (memory lost) it is not.
        replayed, state = fed.replay(call, call.state_before)
        assert replayed.parameters.tensors == call.res.parameters.tensors
        assert same(memory(state), memory(fed.states[r][cid]))
        forgotten, state = fed.replay(call, RecordDict())
        assert forgotten.parameters.tensors != call.res.parameters.tensors
        assert not same(memory(state), memory(fed.states[r][cid]))


@pytest.mark.parametrize("wire_dtype", ["float32", "float16"])
def test_sparse_downlink_keeps_every_client_copy_identical_to_the_global_model(federation, wire_dtype):
    fed = federation(
        "dgc",
        **dgc(**{"dgc.warmup-sparsities": "", "fraction-fit": 0.5, "num-rounds": 6, "downlink": "sparse"}),
        **{"wire-dtype": wire_dtype},
    )
    history = fed.run()
    dense_bytes = parameters_nbytes(ndarrays_to_parameters(fed.strategy.initial_arrays))
    catch_ups = 0
    for call in fed.calls:
        held = load_arrays(fed.states[call.server_round][call.cid], MODEL_KEY)
        assert int(held[0][0]) == call.server_round - 1
        assert all(np.array_equal(c, g) for c, g in zip(held[1:], fed.globals[call.server_round - 1]))
        if call.ins.config["downlink"] == "sparse":
            assert parameters_nbytes(call.ins.parameters) < dense_bytes / 20
            catch_ups += call.ins.config["base_version"] < call.server_round - 2
        else:
            assert parameters_nbytes(call.ins.parameters) == dense_bytes
    sparse_rounds = [
        r for r in range(2, 7) if all(c.ins.config["downlink"] == "sparse" for c in fed.calls if c.server_round == r)
    ]
    assert sparse_rounds and catch_ups > 0
    for r in sparse_rounds:
        assert history[r]["bytes_down_per_client"] < dense_bytes / 20
    assert history[1]["bytes_down_per_client"] == dense_bytes


@pytest.mark.parametrize("correction", [True, False])
def test_dense_dgc_is_momentum_sgd(federation, correction):
    """At sparsity 0 without masking, DGC is momentum SGD (Eq. 7 with momentum correction, Eq. 5 without)."""
    rounds, lr, momentum = 3, 0.05, 0.9
    fed = federation(
        "dgc",
        **{
            "num-clients": 1,
            "batch-size": 4000,  # the whole local data set: the gradient does not depend on batch order
            "local-steps": 1,
            "lr": lr,
            "num-rounds": rounds,
            "dgc.momentum": momentum,
            "dgc.final-sparsity": 0.0,
            "dgc.warmup-sparsities": "",
            "dgc.momentum-masking": False,
            "dgc.momentum-correction": correction,
        },
    )
    history = fed.run()

    data = client_data(fed.cfg, 0)
    model = build_model("mlp", data.in_shape, 10, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    for _ in range(rounds):
        opt.zero_grad()
        F.cross_entropy(model(data.x), data.y).backward()
        opt.step()
    ours, reference = flatten(fed.strategy.global_arrays()), flatten(model_to_arrays(model))
    assert not torch.allclose(ours, flatten(fed.strategy.initial_arrays), atol=1e-3)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-6)

    dense_upload = parameters_nbytes(ndarrays_to_parameters([np.zeros(NUMEL, np.float32)]))
    assert all(r["sparsity"] == 0.0 and r["bytes_up"] == dense_upload for r in history[1:])


@pytest.mark.parametrize(
    "overrides,key",
    [
        ({"dgc.final-sparsity": 1.0}, "final_sparsity=1.0"),
        ({"dgc.final-sparsity": -0.1}, "final_sparsity=-0.1"),
        ({"dgc.warmup-sparsities": "0.9,0.75"}, "warmup_sparsities"),
        ({"dgc.warmup-sparsities": "0.75,0.9999"}, "warmup_sparsities"),
        ({"dgc.warmup-sparsities": "0.75,ninety"}, "warmup_sparsities='0.75,ninety' is invalid"),
        ({"dgc.momentum-correction": False}, "momentum_masking"),
        ({"dgc.momentum": 0.0}, "momentum_correction"),
        ({"dgc.selection": "random"}, "selection='random'"),
        ({"dgc.final-sparsity-typo": 0.9}, "dgc.final-sparsity-typo"),
    ],
)
def test_config_errors_stop_before_training_and_name_the_key(tmp_path, overrides, key):
    run_config = {"strategy": "dgc", "model": "mlp", "output-dir": str(tmp_path), **overrides}
    with pytest.raises(ValueError) as error:
        validate_run_config(run_config)
    assert key in str(error.value)


def test_the_sparse_downlink_forgets_a_client_that_stopped_participating():
    """Its delta would soon cost more than the dense model: the history stays bounded, and it gets the model."""
    from flwr_privacy.strategies.base import Accepted, RoundRecorder
    from flwr_privacy.strategies.dgc import DGCRounds

    from flwr_privacy.algorithms.dgc import DGCConfig

    numel = 1000
    rounds = DGCRounds([np.zeros((10, 100), np.float32)], [True], DGCConfig(), lr=1.0, downlink="sparse")
    rounds.recorder = RoundRecorder()
    generator = torch.Generator().manual_seed(0)
    for server_round in range(1, 60):
        clients = ["active", "gone"] if server_round == 1 else ["active"]
        rounds.configure(server_round, clients)
        indices = torch.randperm(numel, generator=generator)[:20]
        payload = (indices, torch.ones(20), [])
        accepted = [Accepted(c, payload, 10, {}) for c in clients]
        rounds.aggregate(server_round, accepted)
        rounds.after_round(server_round, accepted)
        # A delta costs 6 bytes an entry against 4 * 1000 for the model: at most 667 entries are worth it.
        assert len(torch.unique(torch.cat(list(rounds.changed.values())))) <= 667 + 20
    assert "gone" not in rounds.versions and len(rounds.changed) < 40
    (payload, config), = rounds.configure(60, ["gone"])
    assert payload is None and config["downlink"] == "dense"
    (payload, config), = rounds.configure(60, ["active"])
    assert config["downlink"] == "sparse"


def test_dense_below_and_weight_decay_train_and_send_what_they_say(federation):
    """Tensors under dense-below go whole (the 200x10 weight and the biases), the rest top-k; decay is dense."""
    overrides = {"num-rounds": 8, "local-steps": 5, "lr": 0.05, "dgc.dense-below": 2001, "dgc.weight-decay": 1e-4}
    fed = federation("dgc", **dgc(**overrides))
    history = fed.run()
    assert history[-1]["test_accuracy"] > history[0]["test_accuracy"] + 0.4
    shapes = [a.shape for a in fed.strategy.initial_arrays]
    whole = sum(int(np.prod(s)) for s in shapes if len(s) == 1 or np.prod(s) < 2001)
    assert whole == 200 + 200 + 2000 + 10
    k = whole + kept_count(784 * 200, 0.999) + kept_count(200 * 200, 0.999)
    arrays = [np.zeros(k, index_dtype_for(NUMEL)), np.zeros(k, np.float32)]
    assert history[-1]["bytes_up_per_client"] == parameters_nbytes(ndarrays_to_parameters(arrays))


def test_run_config_forms_map_to_the_algorithms_settings():
    """num-workers 0 is the clients sampled per round; clip-norm 0 is no clipping."""
    from flwr_privacy import registry

    run_config = {"strategy": "dgc", "num-clients": 10, "fraction-fit": 0.5, "dgc.num-workers": 0, "dgc.clip-norm": 0}
    cfg = validate_run_config(run_config)
    config = registry.get("dgc").config(run_config, cfg)
    assert config.num_workers == 5 and config.clip_norm is None
    explicit = registry.get("dgc").config({**run_config, "dgc.num-workers": 3, "dgc.clip-norm": 2.0}, cfg)
    assert explicit.num_workers == 3 and explicit.clip_norm == 2.0


@pytest.mark.parametrize(
    "metrics,reason",
    [
        ({"sent": "abc"}, "metric sent='abc' must be a number"),
        ({"train_loss": float("nan")}, "metric train_loss=nan must be finite"),
        ({"sent": True}, "metric sent=True must be a number"),
        ({"sent": -1}, "metric sent=-1 must be finite and in [0, 609]"),
        ({"sent": 10**18}, "metric sent=1000000000000000000 must be finite and in [0, 609]"),
        ({"train_loss": 1e300}, "metric train_loss=1e+300 must be finite and in [-1e+12, 1e+12]"),
        ({"sent": 2.5}, "metric sent=2.5 must be an integer"),
    ],
)
def test_a_reply_with_a_bad_metric_is_rejected_with_the_reason(federation, reply, metrics, reason, caplog):
    fed = federation("dgc", **dgc(**{"dgc.warmup-sparsities": ""}))
    strategy = fed.strategy
    strategy.configure_fit(1, strategy.initialize_parameters(fed.manager), fed.manager)
    good, bad = fed.proxies[:2]
    replies = [(good, reply(good_update(), metrics={"sent": 3})), (bad, reply(good_update(), metrics=metrics))]
    params, _ = strategy.aggregate_fit(1, replies, [])
    assert params is not None
    strategy.evaluate(1, params)  # the server keeps running: the round closes with the good reply
    assert strategy.history[-1]["failures"] == 1 and strategy.history[-1]["accepted"] == 1
    assert f"client {bad.cid}: reply rejected: {reason}" in caplog.text
