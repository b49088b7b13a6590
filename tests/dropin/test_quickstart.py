"""Our strategies dropped into a Flower app written the way Flower's PyTorch quickstart is.

The app (``tests/apps/quickstart``) has its own ``Net`` with batch norm, a DataLoader of dict batches,
its own ``train`` and loss, the Message API on both sides and its own top-level ``strategies`` package.
Each test swaps one of our algorithms in (``SWAPS``: at most two changed lines per file) and runs it
over an in-process Grid; the slow tests in ``test_wheel.py`` run the same app with ``flwr run``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from flwr_privacy.algorithms.dgc import DGCConfig, kept_count
from flwr_privacy.algorithms.dssgd import DSSGDConfig, num_upload
from flwr_privacy.compression.topk import SparseCodec
from tests.dropin.conftest import NUM_NODES

# What tests/apps/quickstart's Net holds: its parameters, its float buffers (batch norm's running mean and
# variance) and one int64 buffer (num_batches_tracked) that never travels.
SHAPES = [(8, 1, 5, 5), (8,), (8,), (8,), (10, 1152), (10,)]
PARAMETERS = [math.prod(s) for s in SHAPES]
FLOAT_BUFFERS = [8, 8]
NPY_HEADER = 128  # bytes np.save puts before each array's data, as Flower's Array carries it


def expected_upload(algorithm: str, server_round: int) -> int:
    """Bytes one client's reply must carry in a round, from the algorithm's payload formula."""
    buffers = 4 * sum(FLOAT_BUFFERS) + NPY_HEADER * len(FLOAT_BUFFERS)
    per_entry = SparseCodec(sum(PARAMETERS)).bytes_per_entry
    if algorithm == "fedavg":
        return 4 * (sum(PARAMETERS) + sum(FLOAT_BUFFERS)) + NPY_HEADER * (len(PARAMETERS) + len(FLOAT_BUFFERS))
    if algorithm == "dgc":
        sparsity = DGCConfig(final_sparsity=0.99).sparsity_at(server_round - 1)
        # Tensors of one dimension (biases, batch-norm weights) go whole, as the reference sends them.
        entries = sum(math.prod(s) if len(s) == 1 else kept_count(math.prod(s), sparsity) for s in SHAPES)
    else:
        entries = num_upload(DSSGDConfig().theta_u, sum(PARAMETERS))
    return entries * per_entry + 2 * NPY_HEADER + buffers


@pytest.mark.parametrize("algorithm", ["fedavg", "dgc", "dssgd"])
def test_a_strategy_and_its_handler_swap_into_a_quickstart_app(user_app, algorithm):
    changes, result, _ = user_app(algorithm)
    assert changes and all(n <= 2 for n in changes.values()), changes
    accuracy = [result["accuracy"][str(r)] for r in range(len(result["accuracy"]))]
    assert accuracy[-1] > accuracy[0] + 0.3, accuracy
    # start() returns Flower's Result with the final model: the app saved and re-scored it.
    assert result["final_accuracy"] == pytest.approx(accuracy[-1])
    # Client-side evaluation (the app's own @app.evaluate()) ran every round.
    assert sorted(map(int, result["client_eval"])) == list(range(1, len(accuracy)))
    history = result["history"]
    for record in history[1:]:
        assert record["failures"] == 0 and record["clients"] == 2
        assert record["bytes_up_per_client"] == expected_upload(algorithm, record["round"])


@pytest.mark.parametrize("algorithm", ["fedavg", "dgc", "dssgd"])
def test_the_legacy_flavour_runs_our_numpy_clients_on_the_users_dataloader(user_app, algorithm):
    _, result, _ = user_app(algorithm, legacy=True)
    history = result["history"]
    assert history[-1]["test_accuracy"] > history[0]["test_accuracy"] + 0.3
    assert all(r["failures"] == 0 for r in history)


def test_fedavg_under_secure_aggregation_swaps_in_with_two_lines_per_file_and_learns_as_plain_fedavg(user_app):
    """The user's own train function replies with its model; the mod masks the change, the server sees the sum.
    The same run without secure aggregation (same seeds) ends at the same accuracy, up to the quantization."""
    every_node_once = {"fraction-train": 1.0, "num-server-rounds": 1}  # the same nodes in both runs
    changes, secure, grid = user_app("fedavg-secagg", **every_node_once)
    assert changes and all(n <= 2 for n in changes.values()), changes
    _, plain, _ = user_app("fedavg", **every_node_once)
    assert secure["final_accuracy"] > secure["accuracy"]["0"] + 0.3
    assert abs(secure["final_accuracy"] - plain["final_accuracy"]) <= 0.01, (secure, plain)
    for record in secure["history"][1:]:
        assert record["accepted"] == NUM_NODES and record["failures"] == 0
    # No model crossed the wire upwards: the train replies carry no arrays, only the masked vector.
    assert all(nbytes == 0 for _, kind, _, nbytes in grid.carried if kind == "train")


def test_the_sparse_payload_is_what_the_strategy_counted(user_app):
    """The bytes in the records are those of the arrays the grid carried, not a formula of the config."""
    _, result, grid = user_app("dssgd")
    carried = [nbytes for _, kind, _, nbytes in grid.carried if kind == "train"]
    assert sum(carried) == sum(r["bytes_up"] for r in result["history"])
    assert math.isclose(result["history"][1]["bytes_up_per_client"], carried[0])
    assert np.all(np.array(carried) < expected_upload("fedavg", 1) / 5)
