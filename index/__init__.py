"""Embeddings (contract 4), FAISS index building/searching and pseudo-positive mining. Ray-free: the Ray job entry
is cluster/index.py."""
