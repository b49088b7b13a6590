"""Flower Strategies: thin adapters from Flower's server API onto ``flwr_privacy``'s algorithms."""

from strategies.fedavg import FedAvg

__all__ = ["FedAvg"]
