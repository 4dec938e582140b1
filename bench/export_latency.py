"""Prediction speed per export format: batch-1 latency and batch throughput, beside Keras.

For each network, trained briefly (`--train-epochs` on 5,000 images, so that its outputs are
not near-uniform), every format is exported (`fashion_keras.export`) and run by its runtime:
TensorFlow's serving signature (SavedModel), ONNX Runtime, the LiteRT interpreter; Keras
runs `predict` and a plain call `model(x, training=False)`. Contenders alternate call by call,
so a machine that slows down mid-run slows all of them alike. Latency: p50 and p99 of single
images; throughput: images per second in batches of 1,000 (median of the rounds). Parity:
each export's class agreement with Keras and largest probability difference on 1,000 test
images.

    python bench/export_latency.py [--variants baseline dropout improved] [--calls 300]
        [--train-epochs 1] [--json OUT]

Prints a table and, with --json, writes the same numbers as JSON. Not part of the tests.
"""

import argparse
import dataclasses
import json
import os
import platform
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from fashion_keras import build_model, export  # noqa: E402
from fashion_keras.data import load_data  # noqa: E402
from fashion_keras.machine import describe_cpu  # noqa: E402

BATCH = 1000


def trained(variant, x, y, epochs):
    model = build_model(variant)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=128, epochs=epochs, verbose=0)
    return model


def contenders(model, folder, x):
    """name -> (function from images to logits, size in bytes, parity with Keras on `x`)."""
    runs = {
        "keras predict": (lambda x: model.predict(x, batch_size=BATCH, verbose=0), None, None),
        "keras call": (lambda x: keras.ops.convert_to_numpy(model(x, training=False)), None, None),
    }
    for format, (_, name, _) in export.FORMATS.items():
        path = os.path.join(folder, name)
        export.export_model(model, path, format)
        run = export.load_exported(path, format)
        runs[format] = (run, export.disk_size(path), export.check_parity(model, run, x))
    return runs


def measure(runs, x, calls):
    """Times every contender, alternating: `calls` single images, then 5 batches."""
    single = {name: [] for name in runs}
    batch = {name: [] for name in runs}
    for run, *_ in runs.values():  # warm-up: tracing, allocation
        run(x[:1]), run(x[:BATCH])
    for i in range(calls):
        for name, (run, *_) in runs.items():
            start = time.perf_counter()
            run(x[i % len(x) : i % len(x) + 1])
            single[name].append(time.perf_counter() - start)
    for _ in range(5):
        for name, (run, *_) in runs.items():
            start = time.perf_counter()
            run(x[:BATCH])
            batch[name].append(BATCH / (time.perf_counter() - start))
    return {
        name: {
            "p50_ms": round(1000 * float(np.percentile(single[name], 50)), 3),
            "p99_ms": round(1000 * float(np.percentile(single[name], 99)), 3),
            "images_per_s": round(float(np.median(batch[name])), 1),
            "bytes": runs[name][1],
            "parity": runs[name][2] and dataclasses.asdict(runs[name][2]),
        }
        for name in runs
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["baseline", "dropout", "improved"])
    parser.add_argument("--train-epochs", type=int, default=1, help="on 5,000 images first")
    parser.add_argument("--calls", type=int, default=300, help="single-image calls each")
    parser.add_argument("--json", metavar="OUT")
    args = parser.parse_args()
    (x_train, y_train), _, (x, _) = load_data(train_limit=5000, eval_limit=BATCH)
    result = {
        "cpu": describe_cpu(),
        "python": platform.python_version(),
        "keras": keras.__version__,
        "backend": keras.backend.backend(),
        "variants": {},
    }
    print(f"CPU: {result['cpu']}; Keras {keras.__version__} on {result['backend']}")
    for variant in args.variants:
        with tempfile.TemporaryDirectory() as folder:
            model = trained(variant, x_train, y_train, args.train_epochs)
            rows = measure(contenders(model, folder, x), x, args.calls)
        result["variants"][variant] = rows
        print(f"\n{variant}: batch-1 latency (ms) and throughput in batches of {BATCH:,}")
        print(
            f"{'runtime':<14} {'p50':>8} {'p99':>8} {'images/s':>10} {'size MB':>8} "
            f"{'same class':>11} {'max diff':>9}"
        )
        for name, r in rows.items():
            size = f"{r['bytes'] / 1e6:.1f}" if r["bytes"] else "-"
            p = r["parity"]
            same = f"{p['same_class']}/{p['images']}" if p else "-"
            diff = f"{p['max_difference']:.1e}" if p else "-"
            print(
                f"{name:<14} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
                f"{r['images_per_s']:>10,.0f} {size:>8} {same:>11} {diff:>9}"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
