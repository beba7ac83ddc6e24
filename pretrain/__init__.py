"""Pretraining stage: the global-local model (model.py) and its distributed trainer (train.py)."""
from pretrain.model import GlobalLocalModel, build_model, load_model
from pretrain.model_config import ModelConfig

__all__ = ["GlobalLocalModel", "ModelConfig", "build_model", "load_model"]
