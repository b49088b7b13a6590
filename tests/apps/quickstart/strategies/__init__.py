"""The user's own `strategies` package: a name many projects use for their own code."""


def learning_rate(server_round: int, base: float) -> float:
    """A constant schedule; a user project would have its own."""
    return base
