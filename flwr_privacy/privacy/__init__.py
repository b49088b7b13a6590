"""Privacy mechanisms: clipping, noise, the sparse vector technique, accounting."""
