"""Throughput of the tutorial network: naive Keras (float32 and bfloat16) vs this project's
path vs PyTorch eager, and each as a share of this CPU's measured matrix-multiply peak.

Setup: the same data (a class-balanced slice of the training set), the same network
(`baseline`), the same batch size. Contenders alternate round by round, so a machine that
slows down mid-run slows all of them alike; each number is the median over rounds, and the
range of the rounds is printed too (on the shared 2-core machines this was written on, speed
swings between about 1,000 and 1,700 images/s from minute to minute for every contender).

    python bench/throughput.py [--quick] [--json OUT] [--accuracy-epochs 5 [--accuracy-seeds 3]]

With --accuracy-epochs N it also trains naive Keras and `fashion-keras train` for N epochs on
the full 55,000 images, once per seed, and compares their mean test accuracy (the fast path
must not cost any).
The peak is TensorFlow's best on one 2048-square matrix product, in float32 and in bfloat16
(see `peak.py`); a contender's share is its training FLOP/s (3 x the network's forward
multiply-adds x 2, per image) over the peak of the precision it computes in.
Prints a table and, with --json, writes the same numbers as JSON. Not part of the tests.
"""

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from fashion_keras import data, files  # noqa: E402
from fashion_keras.config import load_config  # noqa: E402
from fashion_keras.data import make_dataset  # noqa: E402
from fashion_keras.distribute import describe_device  # noqa: E402
from fashion_keras.train import compile_model, resolve_precision, train  # noqa: E402

from contenders import keras_tutorial_model, torch_tutorial_net  # noqa: E402
from peak import (  # noqa: E402
    TRAINING_PER_FORWARD,
    forward_flops,
    matmul_peak_gflops,
    share_of_peak,
)

BATCH_SIZE = 128


# Setup: the naive tutorial-style code, as most people would write it (bench/contenders.py).
def naive_keras(x, y, x_test, epochs, policy="float32"):
    model = keras_tutorial_model(policy)
    model.fit(x, y, batch_size=BATCH_SIZE, epochs=1, verbose=0)  # warm-up: tracing
    start = time.perf_counter()
    model.fit(x, y, batch_size=BATCH_SIZE, epochs=epochs, verbose=0)
    train_time = time.perf_counter() - start
    start = time.perf_counter()
    model.predict(x_test, verbose=0)
    return train_time, time.perf_counter() - start


# The project's path, built exactly as `fashion-keras train` builds it.
def project(x, y, x_test, epochs, overrides):
    config = load_config("baseline", [f"training.batch_size={BATCH_SIZE}", *overrides])
    model = compile_model(config)
    steps = -(-len(x) // BATCH_SIZE)
    dataset = make_dataset(x, y, BATCH_SIZE, config.seed, 0, epochs + 1)
    model.fit(dataset, epochs=1, steps_per_epoch=steps, shuffle=False, verbose=0)
    start = time.perf_counter()
    model.fit(
        dataset, initial_epoch=1, epochs=epochs + 1, steps_per_epoch=steps, shuffle=False, verbose=0
    )
    train_time = time.perf_counter() - start
    start = time.perf_counter()
    model.predict(x_test, batch_size=1024, verbose=0)
    return train_time, time.perf_counter() - start


def pytorch_eager(x, y, x_test, epochs):
    import torch
    from torch import nn

    torch.set_num_threads(os.cpu_count())
    net = torch_tutorial_net()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    yt = torch.from_numpy(y)

    def epoch():
        for i in torch.randperm(len(xt)).split(BATCH_SIZE):
            optimizer.zero_grad()
            loss_fn(net(xt[i]), yt[i]).backward()
            optimizer.step()

    epoch()  # warm-up
    start = time.perf_counter()
    for _ in range(epochs):
        epoch()
    train_time = time.perf_counter() - start
    start = time.perf_counter()
    with torch.no_grad():
        net(torch.from_numpy(x_test.transpose(0, 3, 1, 2).copy()))
    return train_time, time.perf_counter() - start


def test_accuracies(epochs, seeds, overrides):
    """Test accuracy after `epochs` on the full split, naive Keras vs `fashion-keras train`,
    once per seed (42, 43, ...): one run per side cannot tell a cost from seed-to-seed spread."""
    (x, y), _, (x_test, y_test) = data.load_data(download=False)
    runs = {"naive Keras": [], "fashion_keras": []}
    for seed in range(42, 42 + seeds):
        keras.backend.clear_session()
        keras.utils.set_random_seed(seed)
        model = keras_tutorial_model()
        model.fit(x, y, batch_size=BATCH_SIZE, epochs=epochs, verbose=0)
        runs["naive Keras"].append(model.evaluate(x_test, y_test, verbose=0)[1])
        keras.backend.clear_session()
        config = load_config("baseline", [f"seed={seed}", f"training.epochs={epochs}", *overrides])
        with tempfile.TemporaryDirectory() as run_dir:
            runs["fashion_keras"].append(
                train(config, output=run_dir, verbose=0).metrics["test_accuracy"]
            )
    means = {name: statistics.mean(accuracies) for name, accuracies in runs.items()}
    return {
        "epochs": epochs,
        "seeds": seeds,
        "runs": runs,
        "mean": means,
        "difference_points": 100 * (means["fashion_keras"] - means["naive Keras"]),
    }


def data_load_seconds():
    """`load_data()` without, then with, the decoded-array cache (median of 3 each)."""

    def timed(**kwargs):
        samples = []
        for _ in range(3):
            start = time.perf_counter()
            data.load_data(download=False, **kwargs)
            samples.append(time.perf_counter() - start)
        return statistics.median(samples)

    cold = timed(cache=False)  # gunzip, parse, SHA-256, convert
    data.load_data(download=False)  # make sure the cache exists
    return cold, timed()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small slice, 2 rounds (< 1 minute)")
    parser.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for the project's path, e.g. training.steps_per_execution=8",
    )
    parser.add_argument(
        "--accuracy-epochs",
        type=int,
        default=0,
        metavar="N",
        help="also compare test accuracy after N epochs on the full data (about 1 min/epoch)",
    )
    parser.add_argument(
        "--accuracy-seeds",
        type=int,
        default=1,
        metavar="K",
        help="repeat that comparison with K seeds and compare the means (default 1)",
    )
    args = parser.parse_args(argv)
    if args.accuracy_epochs < 0 or args.accuracy_seeds < 1:
        parser.error("--accuracy-epochs must be >= 0 and --accuracy-seeds >= 1")
    n, rounds, epochs = (2000, 2, 1) if args.quick else (10000, 6, 1)

    cold, cached = data_load_seconds()
    (x, y), _, (x_test, _) = data.load_data(train_limit=n, download=False)
    project_precision = resolve_precision(load_config("baseline", args.set).training.precision)
    contenders = {
        "naive Keras": lambda: naive_keras(x, y, x_test, epochs),
        "naive Keras bf16": lambda: naive_keras(x, y, x_test, epochs, "mixed_bfloat16"),
        "fashion_keras": lambda: project(x, y, x_test, epochs, args.set),
    }
    computes_in = {"naive Keras bf16": "bfloat16", "fashion_keras": project_precision}
    try:
        import torch  # noqa: F401

        contenders["PyTorch eager"] = lambda: pytorch_eager(x, y, x_test, epochs)
    except ImportError:
        pass
    times = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, run in contenders.items():
            keras.backend.clear_session()
            times[name].append(run())

    peaks = {dtype: matmul_peak_gflops(dtype) for dtype in ("float32", "bfloat16")}
    flops = TRAINING_PER_FORWARD * forward_flops(keras_tutorial_model())
    results = {}
    for name, samples in times.items():
        train = statistics.median(t for t, _ in samples)
        infer = statistics.median(i for _, i in samples)
        rates = [n * epochs / t for t, _ in samples]
        dtype = "bfloat16" if "bfloat16" in computes_in.get(name, "") else "float32"
        results[name] = {
            "train_images_per_s": n * epochs / train,
            "train_images_per_s_range": [min(rates), max(rates)],
            "inference_images_per_s": len(x_test) / infer,
            "computes_in": dtype,
            "share_of_peak": share_of_peak(n * epochs / train, flops, peaks[dtype]),
        }
    naive, ours = results["naive Keras"], results["fashion_keras"]
    ratios = {
        "train_vs_naive": ours["train_images_per_s"] / naive["train_images_per_s"],
        # Same-round ratios are less exposed to the machine's speed swings.
        "train_vs_naive_same_round_median": statistics.median(
            t_naive / t_ours
            for (t_naive, _), (t_ours, _) in zip(
                times["naive Keras"], times["fashion_keras"], strict=True
            )
        ),
        "inference_vs_naive": ours["inference_images_per_s"] / naive["inference_images_per_s"],
    }
    if "PyTorch eager" in results:
        ratios["train_vs_pytorch"] = (
            ours["train_images_per_s"] / results["PyTorch eager"]["train_images_per_s"]
        )
    # The machine line names the instruction sets that decide float32 vs bfloat16 speed.
    report = {
        "machine": f"{describe_device()}, {platform.platform()}",
        "versions": {
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "numpy": np.__version__,
        },
        "setup": {
            "train_images": n,
            "test_images": len(x_test),
            "batch_size": BATCH_SIZE,
            "epochs_timed": epochs,
            "rounds": rounds,
            "project_overrides": args.set,
            "project_precision": project_precision,
        },
        "matmul_peak_gflops": peaks,
        "training_flops_per_image": flops,
        "results": results,
        "ratios": ratios,
        "data_load_s": {"cold": cold, "cached": cached},
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        # Last: it trains on the full data, which would inflate the peak RSS above.
        "test_accuracy": test_accuracies(args.accuracy_epochs, args.accuracy_seeds, args.set)
        if args.accuracy_epochs
        else None,
    }
    print(f"{report['machine']}; TF {tf.__version__}, Keras {keras.__version__}")
    print(
        f"{n} training images x {epochs} epoch(s), batch {BATCH_SIZE}, median of {rounds} rounds\n"
    )
    print(
        f"matmul peak: float32 {peaks['float32']:,.0f} GFLOP/s, bfloat16 "
        f"{peaks['bfloat16']:,.0f} GFLOP/s; training costs {flops / 1e6:.1f} MFLOP per image\n"
    )
    print(
        f"| {'contender':<16} | train images/s | (min–max of rounds) | share of peak "
        "| inference images/s |"
    )
    print(f"| {'-' * 16} | {' | '.join('-' * w for w in (14, 19, 13, 18))} |")
    for name, r in results.items():
        train, infer = r["train_images_per_s"], r["inference_images_per_s"]
        low, high = r["train_images_per_s_range"]
        spread = f"{low:,.0f}–{high:,.0f}"
        share = f"{r['share_of_peak']:.0%} of {r['computes_in']}"
        print(f"| {name:<16} | {train:>14,.0f} | {spread:>19} | {share:>13} | {infer:>18,.0f} |")
    print()
    for key, value in ratios.items():
        print(f"{key}: {value:.2f}x")
    rss = report["peak_rss_mb"]
    print(f"data load: cold {cold:.2f} s, cached {cached:.2f} s; peak RSS {rss:.0f} MB")
    if accuracy := report["test_accuracy"]:
        print(f"\ntest accuracy after {accuracy['epochs']} epochs on 55,000 images, by seed:")
        for name, accuracies in accuracy["runs"].items():
            spread = f" ± {statistics.stdev(accuracies):.4f}" if len(accuracies) > 1 else ""
            each = ", ".join(f"{a:.4f}" for a in accuracies)
            print(f"  {name:<15} {each}  (mean {accuracy['mean'][name]:.4f}{spread})")
        print(f"  fashion_keras - naive: {accuracy['difference_points']:+.2f} points (means)")
    if args.json:
        files.write_text(args.json, json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
