"""The run configuration: one validated dataclass shared by ``flwr run``, Hydra and Python callers.

Keys are Flower's kebab-case run-config keys (``num-rounds``, ``fraction-fit``); each maps to the
snake_case field of the same name. Algorithm settings live under a dotted section (``dgc.*``,
``dssgd.*``) and are validated by that algorithm's own config class.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from flwr_privacy.data import DATASETS
from flwr_privacy.features import FEATURES
from flwr_privacy.models import MODELS
from flwr_privacy.partition import PARTITIONS
from flwr_privacy.training import SGDSettings

DEVICES = ("auto", "cpu", "cuda")
DOWNLINKS = ("dense", "sparse")
WIRE_DTYPES = ("float32", "float16")
# How a round combines its accepted updates (``flwr_privacy.strategies.robust``).
AGGREGATIONS = ("mean", "median", "trimmed_mean", "norm_bound", "krum")


FIELD_TYPES: dict[str, type | tuple[type, ...]] = {"str": str, "int": int, "float": (int, float), "bool": bool}


def _key(name: str) -> str:
    return name.replace("_", "-")


@dataclass(frozen=True)
class RunConfig:
    """Everything one federated run needs besides the algorithm's own section.

    ``strategy`` names an algorithm of ``flwr_privacy.registry``; it is checked there, where the
    registered algorithms are known (``experiments.federation.validate_run_config``).
    """

    strategy: str = "fedavg"
    dataset: str = "mnist-embedded"
    data_dir: str = ""
    # what the model trains on: the images, or their ScatterNet features (flwr_privacy.features)
    features: str = "pixels"
    model: str = "cnn"
    partition: str = "iid"
    alpha: float = 0.5
    shards_per_client: int = 2
    num_clients: int = 10
    fraction_fit: float = 0.5
    min_fit_clients: int = 1
    num_rounds: int = 10
    evaluate_every: int = 1
    local_epochs: int = 1
    local_steps: int = 1
    batch_size: int = 10
    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0
    augment: bool = False
    downlink: str = "dense"
    wire_dtype: str = "float32"
    aggregation: str = "mean"
    trim_fraction: float = 0.2
    num_malicious_clients: int = 1
    seed: int = 0
    device: str = "auto"
    # "": a folder of its own for each run (experiments.results.run_folder); the Hydra runner sets its own
    output_dir: str = ""
    checkpoint_every: int = 1
    resume: str = ""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            expected = FIELD_TYPES[str(f.type)]
            if not isinstance(value, expected) or (f.type in ("int", "float") and isinstance(value, bool)):
                raise ValueError(f"{_key(f.name)}={value!r} must be of type {f.type}")
        self._choice("dataset", DATASETS)
        self._choice("features", FEATURES)
        self._choice("model", tuple(MODELS))
        if self.model == "scatter-linear" and self.features != "scatternet":
            raise ValueError(f"model=scatter-linear trains on ScatterNet features; features={self.features!r}: "
                             "set features=scatternet")
        if self.augment and self.features != "pixels":
            raise ValueError(f"augment=true flips and crops images; features={self.features!r} are not images")
        self._choice("partition", PARTITIONS)
        self._choice("device", DEVICES)
        self._choice("downlink", DOWNLINKS)
        self._choice("wire_dtype", WIRE_DTYPES)
        self._choice("aggregation", AGGREGATIONS)
        if not 0 <= self.trim_fraction < 0.5:
            raise ValueError(f"trim-fraction={self.trim_fraction} must be in [0, 0.5)")
        if self.num_malicious_clients < 0:
            raise ValueError(f"num-malicious-clients={self.num_malicious_clients} must be >= 0")
        if not 0 < self.fraction_fit <= 1:
            raise ValueError(f"fraction-fit={self.fraction_fit} must be in (0, 1]")
        for name in (
            "num_clients", "min_fit_clients", "num_rounds", "evaluate_every", "local_epochs", "local_steps",
            "shards_per_client",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{_key(name)}={getattr(self, name)} must be >= 1")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint-every={self.checkpoint_every} must be >= 0 (0: no checkpoints)")
        if self.seed < 0:
            raise ValueError(f"seed={self.seed} must be >= 0 (NumPy and PyTorch seeds are non-negative)")
        if not self.alpha > 0:
            raise ValueError(f"alpha={self.alpha} must be > 0")
        if self.clients_per_round > self.num_clients:
            raise ValueError(
                f"min-fit-clients={self.min_fit_clients} samples more clients than exist "
                f"(num-clients={self.num_clients}); allowed: 1 <= min-fit-clients <= num-clients"
            )
        needed = 2 * self.num_malicious_clients + 3  # Krum's condition n > 2f + 2 (Blanchard et al. 2017)
        if self.aggregation == "krum" and self.clients_per_round < needed:
            raise ValueError(
                f"aggregation=krum with num-malicious-clients={self.num_malicious_clients} needs at least {needed} "
                f"clients per round (n > 2f + 2); this config samples {self.clients_per_round}"
            )
        _ = self.sgd  # validates lr, momentum, weight decay and batch size

    def _choice(self, name: str, allowed: tuple[str, ...]) -> None:
        if getattr(self, name) not in allowed:
            raise ValueError(f"{_key(name)}={getattr(self, name)!r} is unknown; allowed: {list(allowed)}")

    def evaluates(self, server_round: int) -> bool:
        """Whether the server scores the global model after this round: the initial model, every
        ``evaluate_every`` rounds, and the last round always."""
        return server_round % self.evaluate_every == 0 or server_round in (0, self.num_rounds)

    @property
    def clients_per_round(self) -> int:
        """Clients sampled each round: max(C * K, min-fit-clients), as FedAvg samples them."""
        return max(int(self.fraction_fit * self.num_clients), self.min_fit_clients)

    @property
    def sgd(self) -> SGDSettings:
        return SGDSettings(
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            batch_size=self.batch_size,
            augment=self.augment,
        )

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> RunConfig:
        """Build from Flower's run config (kebab-case keys); dotted section keys are left to their owners."""
        known = {_key(f.name): f.name for f in fields(cls)}
        unknown = [k for k in run_config if "." not in k and k not in known]
        if unknown:
            raise ValueError(f"unknown run-config keys {unknown}; allowed: {sorted(known)}")
        return cls(**{known[k]: v for k, v in run_config.items() if k in known})

    def to_run_config(self) -> dict[str, Any]:
        return {_key(f.name): getattr(self, f.name) for f in fields(self)}


def to_section(name: str, config: Any) -> dict[str, Any]:
    """A config dataclass as the dotted keys ``section`` reads back: what a strategy sends its clients.

    Tuples become comma-separated strings and None becomes 0 (Flower's config values are scalars).
    """
    values = {}
    for f in fields(config):
        value = getattr(config, f.name)
        if isinstance(value, tuple):
            value = ",".join(repr(v) for v in value)
        values[f"{name}.{_key(f.name)}"] = 0 if value is None else value
    return values


def section(run_config: dict[str, Any], name: str, config_class: type) -> dict[str, Any]:
    """The keys under ``name.`` with the prefix removed and kebab-case turned into the field names of
    ``config_class`` (a dataclass); a key that names no field is a config error."""
    prefix = f"{name}."
    given = {k[len(prefix) :].replace("-", "_"): k for k in run_config if k.startswith(prefix)}
    known = {f.name for f in fields(config_class)}
    unknown = sorted(key for field, key in given.items() if field not in known)
    if unknown:
        allowed = sorted(f"{name}.{k.replace('_', '-')}" for k in known)
        raise ValueError(f"unknown run-config keys {unknown}; allowed: {allowed}")
    return {field: run_config[key] for field, key in given.items()}
