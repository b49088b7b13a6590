"""Flower Strategies: thin adapters from Flower's server API onto ``flwr_privacy``'s algorithms."""

from strategies.dgc import DGC
from strategies.dssgd import DSSGD
from strategies.fedavg import FedAvg

__all__ = ["DGC", "DSSGD", "FedAvg"]
