"""fashion_keras: the tutorial CNN on Fashion-MNIST, in Keras 3.

The names below load on first use, so `fashion-keras --help` and `fashion-keras data` start
without importing TensorFlow (seconds, and its start-up messages); `from fashion_keras import
build_model` works as usual.
"""

import importlib

__version__ = "0.1.0"

_HOMES = {
    "CLASS_NAMES": "data",
    "load_data": "data",
    "to_one_hot": "data",
    "build_cnn": "models",
    "build_model": "models",
    "list_models": "models",
    "register_model": "models",
}

__all__ = sorted(_HOMES)


def __getattr__(name):
    if name not in _HOMES:
        raise AttributeError(f"module 'fashion_keras' has no attribute {name!r}")
    return getattr(importlib.import_module(f"fashion_keras.{_HOMES[name]}"), name)


def __dir__():
    return sorted(list(globals()) + __all__)
