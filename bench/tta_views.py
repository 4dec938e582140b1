"""Would more test-time views help a trained model? Validation accuracy with translations.

For each saved model (a run's `model.keras`; `fast` already averages each image with its
mirror), the validation split is predicted as it is and moved by whole pixels, and the
logits of these views are averaged. Each set of views is compared with the model alone, on
the validation split only (the speedrun's rule: choices on validation, never the test set).
The moved image is filled with the background (0), not wrapped around.

    python bench/tta_views.py RUN/model.keras [...] [--json OUT]

Prints one row per model and the mean gain (points) with its standard deviation over the
models; with --json, writes them. Not part of the tests.
"""

import argparse
import os
import platform

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from fashion_keras import files  # noqa: E402
from fashion_keras.data import load_data  # noqa: E402
from fashion_keras.distribute import describe_device  # noqa: E402
from fashion_keras.models import load_model  # noqa: E402 (registers our layers and loss)
from fashion_keras.shift import moved  # noqa: E402

ONE = [(0, 1), (0, -1), (1, 0), (-1, 0)]
VIEWS = {  # (down, right) moves, in pixels, beside the image itself
    "as saved": [],
    "+ left/right 1 px": ONE[:2],
    "+ 4 moves of 1 px": ONE,
    "+ 8 moves of 1 px": [(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1) if a or b],
    "+ left/right 2 px": [(0, 2), (0, -2)],
}


def accuracies(path, x, y):
    """Validation accuracy of the model at `path` for each set of `VIEWS`."""
    model = load_model(path)
    moves = {m for views in VIEWS.values() for m in views} | {(0, 0)}
    logits = {m: model.predict(moved(x, *m), batch_size=1000, verbose=0) for m in moves}
    return {
        name: float(np.mean(np.mean([logits[m] for m in [(0, 0), *views]], 0).argmax(1) == y))
        for name, views in VIEWS.items()
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="saved models (a run's model.keras)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    _, (x_val, y_val), _ = load_data()
    rows = {path: accuracies(path, x_val, y_val) for path in args.models}
    gains = {name: [100 * (row[name] - row["as saved"]) for row in rows.values()] for name in VIEWS}
    print(f"{'model':60s} " + " ".join(f"{name:>18s}" for name in VIEWS))
    for path, row in rows.items():
        print(f"{path:60s} " + " ".join(f"{row[name]:18.4f}" for name in VIEWS))
    spread = {n: float(np.std(g, ddof=1)) if len(g) > 1 else float("nan") for n, g in gains.items()}
    print(f"{'mean gain, points (sd)':60s} " + " ".join(
        f"{np.mean(gains[n]):+11.2f} ({spread[n]:.2f})" for n in VIEWS
    ))  # fmt: skip
    if args.json:
        result = {
            "device": describe_device(),
            "machine": platform.processor() or platform.machine(),
            "views": VIEWS,
            "validation_accuracy": rows,
            "mean_gain_points": {n: float(np.mean(g)) for n, g in gains.items()},
            "sd_gain_points": spread,
        }
        files.write_json(args.json, result)


if __name__ == "__main__":
    main()
