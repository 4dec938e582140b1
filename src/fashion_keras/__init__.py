"""fashion_keras: the tutorial CNN on Fashion-MNIST, in Keras 3."""

from fashion_keras.data import CLASS_NAMES, load_data, to_one_hot
from fashion_keras.models import (
    build_cnn,
    build_model,
    list_models,
    load_model,
    register_model,
    tutorial_model,
)

__version__ = "0.2.0"

__all__ = [
    "CLASS_NAMES",
    "build_cnn",
    "build_model",
    "list_models",
    "load_data",
    "load_model",
    "register_model",
    "to_one_hot",
    "tutorial_model",
]
