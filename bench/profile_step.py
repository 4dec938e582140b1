"""Where a training step's time goes on this CPU, layer by layer, against the matmul peak.

For a preset's network (default: the tutorial's, `baseline`) and one batch, it times:

- the whole training step, as `fit` runs it (`train_on_batch`: forward, loss, gradients,
  Adam's update and the metrics, in Keras' compiled training function);
- each layer alone, forward and then forward with both backward products (the gradients of
  its input and of its weights), in a compiled function of its own, on the input it gets in
  the network, less what calling such a function costs by itself;
- the rest: the step less the sum of the layers (the loss, the optimizer, the metrics and
  the step's own overhead).

Each timing is the median of repeats after untimed calls that trace. A convolution's or dense
layer's GFLOP/s is put beside this machine's float32 or bfloat16 matmul peak (`peak.py`),
whichever the preset computes in. Layers timed alone are not the step's exact parts (the
compiled step fuses and overlaps work), so the rest is an estimate and can even come out
below zero on a noisy machine.

    python bench/profile_step.py [--preset baseline] [--batch 128] [--json OUT]

Prints a table and, with --json, writes it as JSON. Not part of the tests.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from fashion_keras import files  # noqa: E402
from fashion_keras.config import load_config  # noqa: E402
from fashion_keras.distribute import describe_device  # noqa: E402
from fashion_keras.train import compile_model, resolve_precision  # noqa: E402

from peak import TRAINING_PER_FORWARD, layer_flops, matmul_peak_gflops  # noqa: E402

REPEATS = 30


def median_ms(function, *args):
    """Median milliseconds of `function(*args)` over REPEATS calls, after 3 untimed ones."""
    for _ in range(3):
        function(*args)
    samples = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        function(*args)
        samples.append(time.perf_counter() - start)
    return 1000 * statistics.median(samples)


def call_floor_ms(inputs):
    """What calling a compiled function on `inputs` and fetching a scalar costs by itself;
    `layer_timings` takes it off, as the whole step pays it once, not once a layer."""
    nothing = tf.function(lambda x: tf.reduce_sum(x))
    return median_ms(lambda: nothing(inputs).numpy())


def layer_timings(layer, inputs):
    """(forward ms, forward-and-backward ms) of `layer` on `inputs`, in training mode, less
    `call_floor_ms`."""
    cotangent = tf.random.normal(layer(inputs, training=True).shape, dtype=layer.compute_dtype)

    @tf.function
    def forward(x):
        return tf.reduce_sum(tf.cast(layer(x, training=True), "float32"))

    @tf.function
    def forward_backward(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(tf.cast(y * cotangent, "float32"))
        grads = tape.gradient(loss, [x, *layer.trainable_variables])
        return [tf.reduce_sum(tf.cast(g, "float32")) for g in grads if g is not None]

    run = lambda f: [t.numpy() for t in tf.nest.flatten(f(inputs))]  # noqa: E731
    floor = call_floor_ms(inputs)
    return median_ms(run, forward) - floor, median_ms(run, forward_backward) - floor


def flat_layers(model):
    """The model's layers in order, nested models opened."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from flat_layers(layer)
        elif not isinstance(layer, keras.layers.InputLayer):
            yield layer


def profile(preset, batch):
    config = load_config(preset, [f"training.batch_size={batch}", "training.epochs=2"])
    precision = resolve_precision(config.training.precision)
    model = compile_model(config, policy=precision)
    rng = np.random.default_rng(0)
    x = rng.random((batch, 28, 28, 1), dtype="float32")
    y = rng.integers(0, 10, batch).astype("int64")
    step_ms = median_ms(lambda: model.train_on_batch(x, y))

    dtype = "bfloat16" if "bfloat16" in precision else "float32"
    peak = matmul_peak_gflops(dtype)
    rows, inputs = [], tf.constant(x)
    for layer in flat_layers(model):
        forward_ms, both_ms = layer_timings(layer, inputs)
        flops = batch * TRAINING_PER_FORWARD * layer_flops(layer)
        gflops = flops / (both_ms / 1000) / 1e9 if flops else None
        rows.append(
            {
                "layer": f"{type(layer).__name__} {layer.name}",
                "output": list(layer(inputs, training=True).shape[1:]),
                "train_mflop": flops / 1e6,
                "forward_ms": forward_ms,
                "forward_backward_ms": both_ms,
                "gflop_s": gflops,
                "share_of_peak": gflops / peak if gflops else None,
            }
        )
        inputs = layer(inputs, training=True)
    layers_ms = sum(r["forward_backward_ms"] for r in rows)
    return {
        "preset": preset,
        "batch": batch,
        "precision": precision,
        "matmul_peak_gflops": peak,
        "step_ms": step_ms,
        "layers_ms": layers_ms,
        "rest_ms": step_ms - layers_ms,
        "train_mflop_per_step": sum(r["train_mflop"] for r in rows),
        "rows": rows,
    }


def print_profile(result):
    step, peak = result["step_ms"], result["matmul_peak_gflops"]
    print(
        f"\n{result['preset']}, batch {result['batch']}, {result['precision']}: a training step "
        f"takes {step:.1f} ms ({result['batch'] / step * 1000:,.0f} images/s); "
        f"matmul peak {peak:,.0f} GFLOP/s"
    )
    print("| layer | output | train MFLOP | forward ms | fwd+bwd ms | share of step | GFLOP/s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in result["rows"]:
        rate = f"{r['gflop_s']:,.0f} ({r['share_of_peak']:.0%})" if r["gflop_s"] else "-"
        print(
            f"| {r['layer']} | {'x'.join(map(str, r['output']))} | {r['train_mflop']:,.0f} "
            f"| {r['forward_ms']:.2f} | {r['forward_backward_ms']:.2f} "
            f"| {r['forward_backward_ms'] / step:.0%} | {rate} |"
        )
    achieved = result["train_mflop_per_step"] / step  # MFLOP per ms = GFLOP/s
    print(
        f"| the rest (loss, Adam, metrics, step overhead) | | | | {result['rest_ms']:.2f} "
        f"| {result['rest_ms'] / step:.0%} | |"
    )
    print(f"whole step: {achieved:,.0f} GFLOP/s, {achieved / peak:.0%} of the peak")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", action="append", help="default: baseline (repeatable)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--json", metavar="OUT")
    args = parser.parse_args(argv)
    machine = f"{describe_device()}, {platform.platform()}"
    print(f"{machine}; TF {tf.__version__}, Keras {keras.__version__}")
    results = [profile(preset, args.batch) for preset in args.preset or ["baseline"]]
    for result in results:
        print_profile(result)
    if args.json:
        report = {"machine": machine, "tensorflow": tf.__version__, "profiles": results}
        files.write_text(args.json, json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
