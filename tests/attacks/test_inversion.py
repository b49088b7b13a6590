"""The gradient-inversion attack: its pieces, and its power on the real uploads of one round.

The power tests attack one MNIST image (the embedded copy, so they run anywhere) through the FedAvg CNN at
initialisation: the undefended dense upload must be reconstructed (a PSNR the attack reaches on every image
tried, with a wide margin), the label must come out of every upload that carries the output layer, and DP-SGD's
noise or DGC's top-k must cost the attack most of its PSNR under the same budget.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from experiments.uploads import one_round, parse_setting
from flwr_privacy.attacks.inversion import (
    InversionConfig,
    LocalTraining,
    Observation,
    _counts_from_bias,
    cosine_distance,
    invert,
    output_layer,
    recover_labels,
    simulate,
    total_variation,
)
from flwr_privacy.attacks.metrics import score, to_unit_range
from flwr_privacy.data import MNIST_STATS, load_dataset
from flwr_privacy.models import build_model

# What the undefended single-image attack reaches at this budget (42-61 dB on the images tried; 20 dB is
# a recognisable digit, the mean training image scores about 12 dB): below it, the attack lost its power.
DENSE_PSNR = 25.0
BUDGET = InversionConfig(iterations=200, restarts=1, tv_weight=1e-3)
MEAN, STD = torch.tensor(MNIST_STATS[0]), torch.tensor(MNIST_STATS[1])
BOUNDS = (((0 - MEAN) / STD).view(1, -1, 1, 1), ((1 - MEAN) / STD).view(1, -1, 1, 1))


@pytest.fixture(scope="module")
def mnist():
    torch.set_num_threads(1)
    _, test = load_dataset("mnist-embedded", "")
    return test


@pytest.fixture(scope="module")
def cnn():
    return build_model("cnn", (1, 28, 28), 10, seed=0).eval()


def attack(setting: str, model, x, y, config: InversionConfig = BUDGET) -> tuple[float, bool]:
    """PSNR of the reconstruction of (x, y) from one round's upload in ``setting``, and whether the label came out."""
    upload = one_round(parse_setting(setting), model, x, y)
    labels = recover_labels(model, upload.observation, len(y), 10, upload.training, torch.zeros(1, 1, 28, 28))
    generator = torch.Generator().manual_seed(0)
    result = invert(model, upload.observation, labels, (1, 28, 28), upload.training, config, BOUNDS, generator)
    scores = score(to_unit_range(result.images, MEAN, STD), to_unit_range(x, MEAN, STD), labels, y)
    return sum(scores.psnr) / len(scores.psnr), scores.label_accuracy == 1


@pytest.fixture(scope="module")
def dense_psnr(mnist, cnn):
    psnr, label_found = attack("fedavg", cnn, mnist.x[:1], mnist.y[:1])
    assert label_found
    return psnr


def test_the_undefended_dense_upload_of_one_image_is_reconstructed(dense_psnr):
    assert dense_psnr > DENSE_PSNR


def test_dp_sgd_noise_costs_the_attack_its_reconstruction(mnist, cnn, dense_psnr):
    noised, _ = attack("fedavg+dp8", cnn, mnist.x[:1], mnist.y[:1], InversionConfig(200, 1, tv_weight=0.1))
    assert noised < 15.0 < dense_psnr - 10


def test_dgc_top_k_at_99_9_percent_leaves_a_much_worse_reconstruction(mnist, cnn, dense_psnr):
    sparse, label_found = attack("dgc-99.9", cnn, mnist.x[:1], mnist.y[:1], InversionConfig(200, 1, tv_weight=0.1))
    assert label_found  # DGC sends the output bias whole
    assert sparse < dense_psnr - 10


@pytest.mark.parametrize("setting", ["fedavg", "fedavg-3steps", "dgc-99.9", "dssgd-10"])
def test_one_image_s_label_is_recovered_from_every_undefended_upload(mnist, cnn, setting):
    for i in range(10):
        x, y = mnist.x[i : i + 1], mnist.y[i : i + 1]
        upload = one_round(parse_setting(setting), cnn, x, y)
        labels = recover_labels(cnn, upload.observation, 1, 10, upload.training, torch.zeros(1, 1, 28, 28))
        assert labels.tolist() == y.tolist(), f"image {i}"


def test_a_batch_s_label_counts_come_from_the_output_bias(mnist, cnn):
    y = mnist.y
    chosen = torch.cat([torch.nonzero(y == 3)[:3, 0], torch.nonzero(y == 7)[:1, 0], torch.nonzero(y == 0)[:4, 0]])
    upload = one_round(parse_setting("fedavg"), cnn, mnist.x[chosen], y[chosen])
    probe = torch.randn((16, 1, 28, 28), generator=torch.Generator().manual_seed(0)).clamp(*BOUNDS)
    labels = recover_labels(cnn, upload.observation, 8, 10, upload.training, probe)
    assert labels.tolist() == sorted(y[chosen].tolist())


def test_the_label_from_the_output_weight_where_the_bias_was_not_sent(mnist, cnn):
    x, y = mnist.x[:1], mnist.y[:1]
    values = simulate(cnn, x, y, "gradient", LocalTraining())
    mask = torch.ones_like(values, dtype=torch.bool)
    mask[output_layer(cnn, 10)[1]] = False
    labels = recover_labels(cnn, Observation(values.detach(), mask, "gradient"), 1, 10, LocalTraining(), x)
    assert labels.tolist() == y.tolist()


def test_one_step_s_change_is_minus_lr_times_the_gradient(cnn, mnist):
    x, y = mnist.x[:2], mnist.y[:2]
    gradient = simulate(cnn, x, y, "gradient", LocalTraining())
    change = simulate(cnn, x, y, "change", LocalTraining(lr=0.5, steps=1))
    torch.testing.assert_close(change, -0.5 * gradient)
    cnn.zero_grad()
    F.cross_entropy(cnn(x), y).backward()
    torch.testing.assert_close(gradient, torch.cat([p.grad.reshape(-1) for p in cnn.parameters()]))


def test_several_steps_unroll_sgd(mnist):
    model = build_model("tanh-cnn", (1, 28, 28), 10, seed=0)
    x, y = mnist.x[:2], mnist.y[:2]
    change = simulate(model, x, y, "change", LocalTraining(lr=0.1, steps=3))
    before = torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    torch.testing.assert_close(change, torch.nn.utils.parameters_to_vector(model.parameters()) - before)


def test_cosine_distance_is_zero_for_the_same_direction_and_two_for_the_opposite():
    a = torch.tensor([1.0, 2.0])
    assert float(cosine_distance(a, 3 * a)) == pytest.approx(0.0, abs=1e-6)
    assert float(cosine_distance(a, -a)) == pytest.approx(2.0)


def test_only_the_observed_entries_enter_the_match(cnn, mnist):
    x, y = mnist.x[:1], mnist.y[:1]
    values = simulate(cnn, x, y, "gradient", LocalTraining()).detach()
    observed = torch.zeros_like(values, dtype=torch.bool)
    observed[::1000] = True
    scrambled = torch.where(observed, values, torch.randn(values.shape, generator=torch.Generator().manual_seed(0)))
    config = InversionConfig(iterations=3, restarts=1)
    results = [
        invert(cnn, Observation(v, observed, "gradient"), y, (1, 28, 28), LocalTraining(), config, BOUNDS,
               torch.Generator().manual_seed(0)).images
        for v in (values, scrambled)
    ]
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)


def test_total_variation_is_zero_on_a_flat_image_and_grows_with_edges():
    assert float(total_variation(torch.ones(1, 1, 4, 4))) == 0
    stripes = torch.zeros(1, 1, 4, 4)
    stripes[..., ::2] = 1
    assert float(total_variation(stripes)) == pytest.approx(1.0)


def test_counts_from_the_bias_gradient_are_the_batch_s_labels():
    expected = torch.full((10,), 0.1)
    counts = torch.tensor([3, 0, 0, 0, 2, 0, 0, 0, 0, 3])
    noise = 0.01 * torch.randn(10, generator=torch.Generator().manual_seed(0))
    assert _counts_from_bias(expected - counts / 8 + noise, expected, 8).tolist() == counts.tolist()
    # Estimates that do not add up to B (a poor estimate of the probabilities) are rounded to B labels.
    assert _counts_from_bias(torch.linspace(-0.2, 0.2, 10), torch.zeros(10), 2).tolist() == [1, 1] + [0] * 8
    many = _counts_from_bias(torch.linspace(0.1, 0.5, 10), torch.zeros(10), 12)
    assert int(many.sum()) == 12 and many.tolist() == sorted(many.tolist(), reverse=True)
    assert _counts_from_bias(torch.linspace(-0.5, 0.5, 10), torch.full((10,), 0.5), 2).tolist() == [1, 1] + [0] * 8


def test_the_best_restart_is_the_lowest_objective(cnn, mnist):
    x, y = mnist.x[:1], mnist.y[:1]
    observation = Observation(simulate(cnn, x, y, "gradient", LocalTraining()).detach(), None, "gradient")
    config = InversionConfig(iterations=5, restarts=3)
    result = invert(cnn, observation, y, (1, 28, 28), LocalTraining(), config, BOUNDS, torch.Generator().manual_seed(0))
    assert len(result.objectives) == 3
    assert result.images.shape == x.shape
    assert (result.images >= BOUNDS[0]).all() and (result.images <= BOUNDS[1]).all()


@pytest.mark.parametrize(
    "kwargs",
    [{"kind": "weights"}, {"values": torch.zeros(2, 2)}, {"observed": torch.ones(3, dtype=torch.bool)}],
)
def test_an_observation_is_checked(kwargs):
    with pytest.raises(ValueError):
        Observation(**{"values": torch.zeros(4), **kwargs})


def test_the_output_layer_is_found_or_refused(cnn):
    weight, bias = output_layer(cnn, 10)
    assert (weight.stop - weight.start, bias.stop - bias.start) == (5120, 10)
    with pytest.raises(ValueError, match="not an output layer of 7 classes"):
        output_layer(cnn, 7)
