"""Flower NumPyClients: thin adapters from Flower's client API onto ``flwr_privacy``'s algorithms."""

from clients.fedavg import FedAvgClient

__all__ = ["FedAvgClient"]
