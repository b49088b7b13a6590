"""Flower NumPyClients: thin adapters from Flower's client API onto ``flwr_privacy``'s algorithms."""

if __name__ != "flwr_privacy.clients":
    # Imported from a source checkout as a top-level package: a second module object per class, and a clash
    # with a user's own `clients` package. The one name is flwr_privacy.clients.
    raise ImportError(f"import flwr_privacy.clients, not {__name__}: pip install -e . maps this folder there")

from flwr_privacy.clients.dgc import DGCClient
from flwr_privacy.clients.dssgd import DSSGDClient
from flwr_privacy.clients.fedavg import FedAvgClient

__all__ = ["DGCClient", "DSSGDClient", "FedAvgClient"]
