"""Would two shorter runs, averaged, beat one long one? Accuracy of a deep ensemble of runs.

Each `--members` names the saved models (a run's `model.keras`) of one ensemble: its
validation accuracy is that of the mean of the members' softmax outputs
(`uncertainty.ensemble_predict`; each member keeps its own test-time views). Choose on the
validation column (the speedrun's rule); the test column is for the record.

    python bench/ensemble.py --members A/model.keras B/model.keras [--members ...] [--json OUT]

Prints one row per member and one per ensemble; with --json, writes them. Not part of the
tests. The averaging here runs after the members' own runs, so its time counts in none of them.
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
from fashion_keras.uncertainty import ensemble_predict  # noqa: E402


def probabilities(model, splits):
    """The softmax of `model` on the images of each `(x, y)` of `splits` (a dict)."""
    return {
        name: ensemble_predict([model], x, verbose=0).probabilities
        for name, (x, _) in splits.items()
    }


def accuracies(members, splits):
    """Accuracy of the mean of `members` (from `probabilities`) on each split of `splits`."""
    return {
        name: float(np.mean(np.mean([p[name] for p in members], 0).argmax(1) == y))
        for name, (_, y) in splits.items()
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--members", nargs="+", action="append", required=True, help="one ensemble's models"
    )
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    _, validation, test = load_data()
    splits = {"validation": validation, "test": test}
    rows = []
    for paths in args.members:
        members = [probabilities(load_model(path), splits) for path in paths]  # one pass each
        for path, member in zip(paths, members, strict=True):
            rows.append({"models": [path], **accuracies([member], splits)})
        if len(members) > 1:
            rows.append({"models": paths, **accuracies(members, splits)})
    print(f"{'models':100s} {'validation':>10s} {'test':>8s}")
    for row in rows:
        print(f"{' + '.join(row['models']):100s} {row['validation']:10.4f} {row['test']:8.4f}")
    if args.json:
        result = {
            "device": describe_device(),
            "machine": platform.processor() or platform.machine(),
            "rows": rows,
        }
        files.write_json(args.json, result)


if __name__ == "__main__":
    main()
