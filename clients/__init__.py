"""Flower NumPyClients: thin adapters from Flower's client API onto ``flwr_privacy``'s algorithms."""

from clients.dgc import DGCClient
from clients.dssgd import DSSGDClient
from clients.fedavg import FedAvgClient

__all__ = ["DGCClient", "DSSGDClient", "FedAvgClient"]
