import numpy as np
import pytest

from flwr_privacy.partition import partition

LABELS = np.repeat(np.arange(10), 600)  # 6,000 examples, 600 per class


def histograms(parts):
    return np.stack([np.bincount(LABELS[p], minlength=10) for p in parts])


@pytest.mark.parametrize("method", ["iid", "dirichlet", "shards"])
def test_parts_are_disjoint_cover_everything_and_are_deterministic(method):
    parts = partition(LABELS, 20, method, seed=3, alpha=0.5)
    joined = np.concatenate(parts)
    assert len(joined) == len(LABELS) and len(np.unique(joined)) == len(LABELS)
    again = partition(LABELS, 20, method, seed=3, alpha=0.5)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = partition(LABELS, 20, method, seed=4, alpha=0.5)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))


def test_iid_gives_equal_sizes_and_balanced_labels():
    hist = histograms(partition(LABELS, 10, "iid", seed=0))
    assert set(hist.sum(1)) == {600}
    assert hist.min() > 30 and hist.max() < 90  # each class near 60 per client


def test_shards_give_most_clients_two_labels():
    hist = histograms(partition(LABELS, 100, "shards", seed=0, shards_per_client=2))
    labels_per_client = (hist > 0).sum(1)
    assert set(hist.sum(1)) == {60}
    assert labels_per_client.max() <= 2 and (labels_per_client == 2).mean() > 0.8


def test_dirichlet_skew_grows_as_alpha_shrinks():
    def mean_labels_held(alpha):
        hist = histograms(partition(LABELS, 10, "dirichlet", seed=0, alpha=alpha))
        share = hist / hist.sum(1, keepdims=True)
        return (share > 0.05).sum(1).mean()

    assert mean_labels_held(0.05) < mean_labels_held(1.0) < mean_labels_held(100.0)
    assert mean_labels_held(100.0) == 10
    parts = partition(LABELS, 50, "dirichlet", seed=1, alpha=0.01)
    assert min(len(p) for p in parts) >= 1


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(num_clients=0, method="iid"), "num-clients=0"),
        (dict(num_clients=10, method="zipf"), "partition='zipf' is unknown"),
        (dict(num_clients=10, method="dirichlet", alpha=0.0), "alpha=0.0 must be > 0"),
    ],
)
def test_bad_arguments_name_the_key(kwargs, match):
    with pytest.raises(ValueError, match=match):
        partition(LABELS, seed=0, **kwargs)
