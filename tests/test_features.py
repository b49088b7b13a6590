"""ScatterNet features (Tramer & Boneh 2021): the shapes their models take, computed from each image alone
(so a client's features say nothing of anyone else's), once per client (cached), and a config that
cannot work is refused before anything trains."""

from __future__ import annotations

import pytest
import torch

from flwr_privacy.config import RunConfig
from flwr_privacy.data import TensorData, cache_dir, load_dataset
from flwr_privacy.features import scatter, scatternet_features
from flwr_privacy.models import build_model


@pytest.fixture(scope="module")
def mnist_sample() -> TensorData:
    train, _ = load_dataset("mnist-embedded")
    return train.subset(torch.arange(64).numpy())


def test_mnist_and_cifar_shapes_are_tramer_and_bonehs():
    assert scatter(torch.randn(2, 1, 28, 28)).shape == (2, 81, 7, 7)
    assert scatter(torch.randn(2, 3, 32, 32)).shape == (2, 243, 8, 8)
    assert scatter(torch.randn(0, 1, 28, 28)).shape == (0, 81, 7, 7)  # a client with no image


def test_an_images_features_depend_on_that_image_alone(mnist_sample):
    whole = scatter(mnist_sample.x, batch_size=64)
    alone = torch.cat([scatter(mnist_sample.x[i : i + 1]) for i in (0, 17, 63)])
    torch.testing.assert_close(alone, whole[[0, 17, 63]], rtol=1e-5, atol=1e-6)
    # and they carry the image: two different digits do not share their features
    assert not torch.allclose(whole[0], whole[1])


def test_features_are_computed_once_and_read_back_from_the_cache(mnist_sample, monkeypatch, tmp_path):
    monkeypatch.setenv("FLWR_PRIVACY_CACHE", str(tmp_path))
    first = scatternet_features(mnist_sample)
    assert len(list(cache_dir().glob("scatternet-*.npy"))) == 1
    monkeypatch.setattr("flwr_privacy.features.scatter", lambda *a, **k: pytest.fail("computed twice"))
    again = scatternet_features(mnist_sample)
    assert torch.equal(again.x, first.x) and torch.equal(again.y, mnist_sample.y)
    # other images are other features, not the cached ones
    other = TensorData(mnist_sample.x.flip(-1), mnist_sample.y)
    monkeypatch.setattr("flwr_privacy.features.scatter", scatter)
    assert not torch.equal(scatternet_features(other).x, first.x)
    assert len(list(cache_dir().glob("scatternet-*.npy"))) == 2


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"features": "sift"}, r"features='sift' is unknown; allowed: \['pixels', 'scatternet'\]"),
        ({"features": "scatternet", "augment": True}, r"augment=true flips and crops images"),
        ({"model": "scatter-linear"}, r"model=scatter-linear trains on ScatterNet features; features='pixels'"),
    ],
)
def test_bad_feature_settings_name_the_key(overrides, match):
    with pytest.raises(ValueError, match=match):
        RunConfig.from_run_config(overrides)


def test_a_scatternet_model_on_pixels_says_to_set_features():
    with pytest.raises(ValueError, match="set features=scatternet"):
        build_model("scatter-linear", (1, 28, 28), 10)


def test_images_of_the_wrong_shape_are_refused():
    with pytest.raises(ValueError, match=r"sides divisible by 4, got 30 x 30"):
        scatter(torch.randn(1, 1, 30, 30))
    with pytest.raises(ValueError, match=r"need images \(N, C, H, W\)"):
        scatter(torch.randn(28, 28))
