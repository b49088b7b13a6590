"""The math keeps its state and results on the model's device, whatever device the wire's tensors come on.

No GPU here: PyTorch's ``meta`` device (tensors with shapes and no data) stands in for one. A tensor the
code forgets to move, or creates on the default device, is then a CPU tensor, which the test sees (and
which mixed with the model's tensors fails on a GPU as it does on ``meta``)."""

from __future__ import annotations

import torch

from flwr_privacy.algorithms.dgc import DGCConfig, DGCMemory, DGCServer, average_sparse
from flwr_privacy.algorithms.dssgd import download_indices, overwrite_local
from flwr_privacy.compression import SparseCodec
from flwr_privacy.privacy import gaussian_mechanism, laplace_mechanism

META = torch.device("meta")


def test_dgc_memory_lives_on_its_device_and_takes_gradients_from_elsewhere():
    memory = DGCMemory(DGCConfig(dense_below=5), [30, 3], device=META)
    assert {memory.u.device, memory.v.device, memory.compressed.device} == {META}
    memory.accumulate(torch.ones(33))  # a gradient computed on the CPU
    indices, values = memory.compress(0.9)
    assert memory.v.device == indices.device == values.device == META


def test_the_dgc_server_steps_on_its_weights_device():
    config = DGCConfig(weight_decay=1e-4, momentum=0.9)
    server = DGCServer(torch.zeros(7, device=META), [(2, 3), (1,)], config, lr=0.1)
    assert server.step(torch.ones(7, device=META)).device == META


def test_the_server_side_average_and_densify_stay_on_the_values_device():
    update = (torch.tensor([1, 3]), torch.ones(2, device=META))
    assert average_sparse([update], [1.0], 5).device == META
    assert SparseCodec(numel=5).densify(*update).device == META


def test_dssgd_steps_keep_the_parameters_device():
    local = torch.zeros(5, device=META)
    assert overwrite_local(local, torch.tensor([1]), torch.ones(1)).device == META
    assert download_indices(torch.zeros(5, device=META), 1.0).device == META


def test_seeded_noise_is_added_on_the_values_device():
    x = torch.zeros(4, device=META)
    assert laplace_mechanism(x, 1.0, 1.0, torch.Generator().manual_seed(0)).device == META
    assert gaussian_mechanism(x, 1.0, 0.5, 1e-5, torch.Generator().manual_seed(0)).device == META
