import numpy as np
import pytest

from flwr_privacy.data import DataError, check_data, load_dataset


def test_embedded_mnist_is_real_balanced_and_normalised():
    train, test = load_dataset("mnist-embedded")
    assert train.x.shape == (4000, 1, 28, 28) and test.x.shape == (1000, 1, 28, 28)
    assert np.bincount(test.y.numpy()).tolist() == [100] * 10
    assert abs(float(train.x.mean())) < 0.1 and 0.8 < float(train.x.std()) < 1.2


def test_full_mnist_from_the_original_gz_files(shared_data):
    train, test = load_dataset("mnist", str(shared_data / "mnist"))
    assert len(train) == 60_000 and len(test) == 10_000
    assert train.y[:5].tolist() == [5, 0, 4, 1, 9]  # the first labels of the original file


def test_cifar10_exact_subset(shared_data):
    train, test = load_dataset("cifar10", str(shared_data / "cifar-10" / "exact-subset"))
    assert train.x.shape == (4000, 3, 32, 32) and len(test) == 1000
    assert test.y[:4].tolist() == [3, 8, 8, 0]


@pytest.mark.parametrize(
    "dataset,data_dir,match",
    [
        ("imagenet", "", "dataset='imagenet' is unknown; allowed"),
        ("mnist", "", "needs data-dir"),
        ("mnist", "/nonexistent/folder", "is not a folder"),
        ("svhn", "/tmp", "missing"),
    ],
)
def test_bad_data_settings_fail_before_training(dataset, data_dir, match):
    with pytest.raises(DataError, match=match):
        check_data(dataset, data_dir)


def test_folder_without_files_names_what_is_expected(tmp_path):
    with pytest.raises(DataError, match="holds no MNIST: expected"):
        check_data("mnist", str(tmp_path))
    with pytest.raises(DataError, match="holds no CIFAR-10"):
        check_data("cifar10", str(tmp_path))
