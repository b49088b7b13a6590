"""Per-algorithm steps, named as their papers name them."""
