import numpy as np
import pytest
import torch
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr_privacy.strategies.legacy import parameters_nbytes

from flwr_privacy.models import build_model
from flwr_privacy.wire import arrays_to_model, flatten, model_to_arrays, trainable_mask, unflatten, wire_keys


@pytest.mark.parametrize("name,shape", [("cnn", (1, 28, 28)), ("resnet20", (3, 32, 32))])
def test_round_trip_through_flower_parameters_restores_the_model(name, shape):
    source = build_model(name, shape, 10, seed=1)
    target = build_model(name, shape, 10, seed=2)
    arrays = parameters_to_ndarrays(ndarrays_to_parameters(model_to_arrays(source)))
    arrays_to_model(target, arrays)
    x = torch.randn(4, *shape)
    source.eval(), target.eval()
    assert torch.equal(source(x), target(x))


def test_order_is_state_dict_order_without_integer_buffers():
    model = build_model("resnet20", (3, 32, 32), 10)
    keys = wire_keys(model)
    assert keys == [k for k in model.state_dict() if "num_batches_tracked" not in k]
    mask = trainable_mask(model)
    assert sum(mask) == len(list(model.parameters()))
    assert not mask[keys.index("bn.running_mean")]


def test_fedavg_cnn_has_the_papers_parameter_count():
    arrays = model_to_arrays(build_model("cnn", (1, 28, 28), 10))
    assert sum(a.size for a in arrays) == 1_663_370


def test_serialized_bytes_are_array_bytes_plus_a_small_header_each():
    arrays = model_to_arrays(build_model("cnn", (1, 28, 28), 10))
    nbytes = parameters_nbytes(ndarrays_to_parameters(arrays))
    data = sum(a.nbytes for a in arrays)
    assert data == 4 * 1_663_370
    assert data < nbytes <= data + 128 * len(arrays)


def test_wrong_count_or_shape_is_rejected_and_model_unchanged():
    model = build_model("mlp", (1, 28, 28), 10)
    before = model_to_arrays(model)
    with pytest.raises(ValueError, match="expected 6 arrays"):
        arrays_to_model(model, before[:-1])
    bad = [a.copy() for a in before]
    bad[0] = np.zeros((3, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="expected shape"):
        arrays_to_model(model, bad)
    assert all(np.array_equal(a, b) for a, b in zip(before, model_to_arrays(model)))


def test_flatten_unflatten_round_trip():
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(4, dtype=np.float32)]
    flat = flatten(arrays)
    assert flat.shape == (10,)
    back = unflatten(flat, [a.shape for a in arrays])
    assert all(np.array_equal(a, b) for a, b in zip(arrays, back))
    with pytest.raises(ValueError, match="flat vector has 10 entries"):
        unflatten(flat, [(3, 3)])
