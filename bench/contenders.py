"""The tutorial network as the benchmarks' naive contenders write it, in Keras and in PyTorch.

Shared by `throughput.py` and `frontier.py`: both frameworks get the same layers as the
project's `baseline` (three 3x3 conv blocks of 32, 64 and 128 filters with same padding, each
pooled 2x2 with same padding, 28 -> 14 -> 7 -> 4; a 128-unit dense layer; 10 logits).
"""


def keras_tutorial_model(policy="float32"):
    """The tutorial network in plain Keras, compiled with Adam 1e-3 as a user would.

    `policy`: the Keras dtype policy; `"mixed_bfloat16"` is what a user who read Keras'
    mixed-precision guide would set on a CPU with bfloat16 units.
    """
    import keras

    from fashion_keras import tutorial_model

    keras.mixed_precision.set_dtype_policy(policy)
    model = tutorial_model()
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def torch_tutorial_net():
    """The same network in PyTorch (its default initialisation), channels first."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2, ceil_mode=True),  # as Keras' padding="same": 7 -> 4
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2, ceil_mode=True),
        nn.Conv2d(64, 128, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2, ceil_mode=True),
        nn.Flatten(),
        nn.Linear(128 * 4 * 4, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )
