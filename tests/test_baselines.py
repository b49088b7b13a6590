"""The centralized and standalone baselines on real (embedded) MNIST."""

import torch

from flwr_privacy.baselines import centralized, federated_epochs, standalone
from flwr_privacy.data import load_dataset
from flwr_privacy.partition import partition
from flwr_privacy.training import SGDSettings


def test_federated_epochs_matches_the_sample_gradients_of_the_run():
    # 5 clients x 1 epoch over 400 examples each, 20 rounds, 4,000 examples pooled: 10 passes.
    assert federated_epochs(5 * 400, 20, 4000) == 10
    assert federated_epochs(10, 1, 4000) == 1


def test_pooling_the_data_beats_each_client_alone():
    train, test = load_dataset("mnist-embedded", "")
    parts = [train.subset(p) for p in partition(train.y.numpy(), 20, "iid", seed=0)[:4]]
    settings = SGDSettings(lr=0.05, batch_size=32)
    device = torch.device("cpu")
    central = centralized("mlp", train, test, 1, settings, device)
    alone = standalone("mlp", parts, test, 1, settings, device)
    assert central.accuracy > 0.8
    assert alone.clients == 4 and 0.1 < alone.accuracy < central.accuracy - 0.05
    assert alone.accuracy_std >= 0
