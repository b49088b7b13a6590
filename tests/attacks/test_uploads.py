"""One round's real upload per setting (experiments.uploads), as the strategy's own decode returns it."""

from __future__ import annotations

import pytest
import torch
from flwr_privacy.strategies.privacy import dpsgd_spent

from experiments.uploads import DSSGD_GAMMA, Setting, dpsgd_plan, one_round, parse_setting
from flwr_privacy.algorithms.dgc import DGCConfig, dense_tensors, entries_sent
from flwr_privacy.algorithms.dssgd import num_upload
from flwr_privacy.attacks.inversion import LocalTraining, simulate
from flwr_privacy.models import build_model


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return build_model("tanh-cnn", (1, 28, 28), 10, seed=0)


@pytest.fixture(scope="module")
def batch():
    generator = torch.Generator().manual_seed(0)
    return torch.randn((2, 1, 28, 28), generator=generator), torch.tensor([3, 5])


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("fedavg", Setting("fedavg", "fedavg")),
        ("fedavg-5steps", Setting("fedavg-5steps", "fedavg", steps=5)),
        ("dgc-99.9", Setting("dgc-99.9", "dgc", sparsity=0.999)),
        ("dssgd-10+dp3", Setting("dssgd-10+dp3", "dssgd", theta_u=0.1, dpsgd_epsilon=3.0)),
        ("dssgd-1+svt8", Setting("dssgd-1+svt8", "dssgd", theta_u=0.01, svt_epsilon=8.0)),
    ],
)
def test_setting_names_are_parsed(name, expected):
    parsed = parse_setting(name)
    assert parsed == expected


@pytest.mark.parametrize(
    "name", ["fedavg-5", "dgc", "dgc-5steps", "dgc-99+svt1", "sgd", "fedavg+dp", "dssgd-1+dp1+svt1"]
)
def test_a_setting_outside_the_grammar_is_refused(name):
    with pytest.raises(ValueError, match="setting"):
        parse_setting(name)


def test_fedavg_s_upload_is_the_clients_change_of_weights(model, batch):
    upload = one_round(parse_setting("fedavg-2steps"), model, *batch, lr=0.1)
    expected = simulate(model, *batch, "change", LocalTraining(0.1, 2))
    assert upload.observation.observed is None and upload.observation.kind == "change"
    torch.testing.assert_close(upload.observation.values, expected, atol=1e-6, rtol=1e-4)


def test_dgc_s_upload_is_the_top_k_of_the_gradient_with_vectors_whole(model, batch):
    upload = one_round(parse_setting("dgc-99"), model, *batch)
    observation = upload.observation
    shapes = [tuple(p.shape) for p in model.parameters()]
    config = DGCConfig(final_sparsity=0.99)
    expected = entries_sent([p.numel() for p in model.parameters()], dense_tensors(shapes, config), 0.99)
    assert observation.kind == "gradient" and int(observation.mask.sum()) == expected == upload.sent
    gradient = simulate(model, *batch, "gradient", LocalTraining())
    torch.testing.assert_close(observation.values[observation.mask], gradient[observation.mask])


def test_dssgd_s_upload_is_its_selected_fraction_clipped_to_gamma(model, batch):
    upload = one_round(parse_setting("dssgd-10"), model, *batch)
    observation = upload.observation
    numel = sum(p.numel() for p in model.parameters())
    assert int(observation.mask.sum()) == num_upload(0.1, numel)
    assert observation.values.abs().max() <= DSSGD_GAMMA and observation.clipped_at == DSSGD_GAMMA


def test_dp_sgd_s_noise_is_the_ledger_s_for_the_stated_epsilon(model, batch):
    upload = one_round(parse_setting("fedavg+dp3"), model, *batch)
    plan = dpsgd_plan(parse_setting("fedavg+dp3"), 2, rounds=1)
    assert upload.noise_multiplier == plan.config.noise_multiplier > 1
    assert dpsgd_spent(plan, 1).epsilon == pytest.approx(3.0, rel=0.01) == upload.epsilon
    clean = simulate(model, *batch, "change", LocalTraining()).detach()
    cosine = torch.nn.functional.cosine_similarity(upload.observation.values, clean, dim=0)
    assert abs(float(cosine)) < 0.2  # the noise, sigma C / B per entry, swamps an update of norm <= lr C


@pytest.mark.parametrize("setting", ["dgc-99+dp8", "dssgd-10+dp8", "fedavg-2steps+dp8"])
def test_every_algorithm_runs_dp_sgd_from_a_model_in_evaluation_mode(model, batch, setting):
    upload = one_round(parse_setting(setting), model.eval(), *batch)
    assert upload.epsilon == pytest.approx(8.0, rel=0.01)
    assert not model.training  # the global model is left as it was


def test_dssgd_s_svt_spends_its_epsilon(model, batch):
    upload = one_round(parse_setting("dssgd-1+svt1"), model, *batch)
    assert upload.epsilon == pytest.approx(1.0)
    assert upload.observation.values.abs().max() <= DSSGD_GAMMA
