"""How close a training step gets to this CPU's matrix-multiply peak.

A convolution network's training is almost all multiply-adds, so the speed TensorFlow reaches
on one large matrix product (in float32, and in bfloat16 where the CPU has units for it) is
the ceiling a training step could approach on the machine at hand. `share_of_peak` puts a
measured training rate beside it.
"""

import time

MATMUL_SIZE = 2048
TRAINING_PER_FORWARD = 3  # the forward pass, then the gradients of inputs and of weights


def matmul_peak_gflops(dtype="float32", seconds=2.0):
    """The best GFLOP/s of a `MATMUL_SIZE`-square matrix product in `dtype`, over repeats
    for about `seconds` (after one untimed call)."""
    import tensorflow as tf

    a = tf.random.uniform((MATMUL_SIZE, MATMUL_SIZE), dtype="float32")
    a = tf.cast(a, dtype)
    product = tf.function(lambda m: tf.reduce_sum(tf.cast(tf.matmul(m, m)[:1, :1], "float32")))
    product(a).numpy()
    best, spent = float("inf"), 0.0
    while spent < seconds:
        start = time.perf_counter()
        product(a).numpy()
        took = time.perf_counter() - start
        best, spent = min(best, took), spent + took
    return 2 * MATMUL_SIZE**3 / best / 1e9


def layer_flops(layer):
    """Multiply-adds x 2 of one image through a convolution or dense `layer` (0 otherwise)."""
    import keras

    if not isinstance(layer, keras.layers.Conv2D | keras.layers.Dense):
        return 0
    macs = 1
    for size in [*layer.output.shape[1:-1], *layer.kernel.shape]:  # positions x kernel
        macs *= size
    return 2 * macs


def forward_flops(model):
    """`layer_flops` of one image's forward pass through `model`, nested models included
    (the layers that are neither convolutions nor dense are a rounding error here)."""
    import keras

    return sum(
        forward_flops(layer) if isinstance(layer, keras.Model) else layer_flops(layer)
        for layer in model.layers
    )


def share_of_peak(images_per_s, flops_per_image, peak_gflops):
    """The share of `peak_gflops` a training rate of `images_per_s` uses."""
    return images_per_s * flops_per_image / (peak_gflops * 1e9)
