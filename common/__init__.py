"""Small pieces every stage shares: typed configs and fsspec I/O. Knows nothing of models or Ray."""
