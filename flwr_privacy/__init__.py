"""flwr-privacy: the algorithms, privacy mechanisms and codecs, in pure PyTorch and NumPy.

Nothing in this package imports Flower; ``strategies`` and ``clients`` adapt it onto Flower.
"""
