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


def test_mnist_files_that_are_cut_short_foreign_or_mismatched_are_named(shared_data, tmp_path):
    import gzip
    import shutil

    from flwr_privacy.data import DataError, load_mnist

    source = shared_data / "mnist" / "MNIST" / "raw"
    names = [p.name for p in source.glob("*.gz")]

    def copy(into):
        into.mkdir()
        for name in names:
            shutil.copy(source / name, into / name)
        return into

    truncated = copy(tmp_path / "truncated")
    path = truncated / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:100_000])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz is not a complete gzip file"):
        load_mnist(truncated)

    foreign = copy(tmp_path / "foreign")
    (foreign / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz is not a complete gzip file"):
        load_mnist(foreign)

    mismatched = copy(tmp_path / "mismatched")  # the 10,000 test labels beside the 60,000 training images
    shutil.copy(source / "t10k-labels-idx1-ubyte.gz", mismatched / "train-labels-idx1-ubyte.gz")
    with pytest.raises(DataError, match="60000 images but 10000 labels"):
        load_mnist(mismatched)

    short = copy(tmp_path / "short")  # valid gzip, an IDX body cut short
    with gzip.open(source / "train-labels-idx1-ubyte.gz") as f:
        body = f.read()
    with gzip.open(short / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(body[:-10])
    with pytest.raises(DataError, match="header \\[60000\\] says 60008"):
        load_mnist(short)


def test_cuda_asked_for_without_a_gpu_is_a_config_error():
    import torch

    from experiments.federation import validate_run_config

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="device='cuda' but torch sees no CUDA device here"):
        validate_run_config({"device": "cuda"})
