"""The algorithm registry: each algorithm named once, with its settings and its two Flower factories.

An :class:`Algorithm` names its config class (the dataclass behind its ``<name>.*`` run-config section),
how to build the strategy (server side) and how to build the client (client side). The runner, the
Flower App and config validation look algorithms up here, so adding one is one ``register`` call::

    from flwr_privacy.registry import Algorithm, register

    register(Algorithm("fedprox", strategy=make_fedprox, client=make_fedprox_client, config_class=FedProxConfig))

The factories receive what the caller has built (``experiments.algorithms.ServerSetup`` and
``ClientSetup`` in this repository's runner); the registry itself is plain Python and imports nothing
of Flower. ``docs/extending.md`` walks through a whole example.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, is_dataclass
from typing import Any

from flwr_privacy.config import section

ConfigBuilder = Callable[[dict[str, Any], Any], Any]


@dataclass(frozen=True)
class Algorithm:
    """One federated algorithm.

    Args:
        name: what ``strategy=`` names; also the prefix of its run-config section (``name.key``).
        strategy: ``strategy(setup) -> Strategy``, the server side.
        client: ``client(setup) -> NumPyClient``, the client side.
        config_class: a dataclass of the algorithm's settings (validated in its ``__post_init__``), built
            from the ``name.*`` keys; None if it has none (then any ``name.*`` key is an error).
        build_config: ``build_config(values, run_config) -> config``, where building needs more than
            ``config_class(**values)`` (DGC's workers default to the clients per round, say).
        dpsgd_steps: how its clients train a round under DP-SGD, for the server's ledger: ``"epochs"``
            (local-epochs passes over the data, FedAvg and DSSGD) or ``"steps"`` (local-steps lots, DGC).
    """

    name: str
    strategy: Callable[[Any], Any]
    client: Callable[[Any], Any]
    config_class: type | None = None
    build_config: ConfigBuilder | None = None
    dpsgd_steps: str = "epochs"

    def __post_init__(self) -> None:
        if self.dpsgd_steps not in ("epochs", "steps"):
            raise ValueError(f"dpsgd_steps={self.dpsgd_steps!r} of {self.name!r} must be 'epochs' or 'steps'")
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum() or "." in self.name:
            raise ValueError(f"algorithm name {self.name!r} must be a non-empty word (letters, digits, - or _)")
        if self.config_class is not None and not is_dataclass(self.config_class):
            raise ValueError(f"config_class of {self.name!r} must be a dataclass, got {self.config_class!r}")

    def config(self, run_config: dict[str, Any], cfg: Any = None) -> Any:
        """The algorithm's settings from the ``name.*`` keys of a run config (None without a config class)."""
        if self.config_class is None:
            given = sorted(k for k in run_config if k.startswith(f"{self.name}."))
            if given:
                raise ValueError(f"unknown run-config keys {given}: {self.name} takes no settings")
            return None
        values = section(run_config, self.name, self.config_class)
        if self.build_config is not None:
            return self.build_config(values, cfg)
        return self.config_class(**values)

    @property
    def keys(self) -> list[str]:
        """The run-config keys of its section, as ``flwr run`` spells them."""
        if self.config_class is None:
            return []
        return [f"{self.name}.{f.name.replace('_', '-')}" for f in fields(self.config_class)]


_ALGORITHMS: dict[str, Algorithm] = {}


def register(algorithm: Algorithm, *, replace: bool = False) -> Algorithm:
    """Add an algorithm; a second one under a taken name is an error unless ``replace``."""
    if not isinstance(algorithm, Algorithm):
        raise TypeError(f"register takes an Algorithm, got {type(algorithm).__name__}")
    if algorithm.name in _ALGORITHMS and not replace:
        raise ValueError(f"an algorithm named {algorithm.name!r} is already registered (pass replace=True)")
    _ALGORITHMS[algorithm.name] = algorithm
    return algorithm


def unregister(name: str) -> None:
    """Remove an algorithm (for tests and notebooks that register one for a while)."""
    get(name)
    del _ALGORITHMS[name]


def get(name: str) -> Algorithm:
    """The algorithm registered under ``name``; an unknown name is an error listing the known ones."""
    try:
        return _ALGORITHMS[name]
    except (KeyError, TypeError):
        raise ValueError(f"strategy={name!r} is unknown; allowed: {names()}") from None


def names() -> list[str]:
    """The registered algorithms' names, sorted."""
    return sorted(_ALGORITHMS)
