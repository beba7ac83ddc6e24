"""Embeddings (contract 4), FAISS index building/searching and pseudo-positive mining. Ray-free: the Ray job entry
is cluster/index.py."""
import logging

# FAISS's loader reports at INFO which instruction set it tried (a failed AVX512 attempt reads like an error:
# `ModuleNotFoundError`); our modules import faiss only below this package, so its loader stays at WARNING.
logging.getLogger("faiss.loader").setLevel(logging.WARNING)
