"""Flower Strategies: thin adapters from Flower's server API onto ``flwr_privacy``'s algorithms."""

if __name__ != "flwr_privacy.strategies":
    # Imported from a source checkout as a top-level package: a second module object per class, and a clash
    # with a user's own `strategies` package. The one name is flwr_privacy.strategies.
    raise ImportError(f"import flwr_privacy.strategies, not {__name__}: pip install -e . maps this folder there")

from flwr_privacy.strategies.dgc import DGC
from flwr_privacy.strategies.dssgd import DSSGD
from flwr_privacy.strategies.fedavg import FedAvg

__all__ = ["DGC", "DSSGD", "FedAvg"]
