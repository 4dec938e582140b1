"""Reading a run directory: its config, history, metrics, backup and saved models.

A run directory holds `config.yaml` (written first), `history.csv` and `best.keras`
(updated every epoch), `logs/` (TensorBoard), `backup/` (while the run is unfinished), with
a time budget `plan.json`, and at the end `model.keras` and `metrics.json` (written last:
its presence means the run is complete).
"""

import csv
import dataclasses
import json
from pathlib import Path

from fashion_keras.errors import UserError


class RunError(UserError):
    """The run directory cannot be used as asked."""


def read_history(path):
    """Rows of a `history.csv` as dicts of floats (`epoch` as int, 1-based); [] if absent."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [
            {k: int(v) if k == "epoch" else float(v) for k, v in row.items()}
            for row in csv.DictReader(f)
        ]


def read_json(path):
    """A JSON file as a dict, or None when it does not exist."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else None


def load_run(run_dir):
    """A run directory's `config.yaml` (as text), `metrics.json` and `history.csv`.

    Returns:
        A dict with `run_dir` (a Path), `config` (text), `metrics` (a dict, empty while the
        run is unfinished) and `history` (a DataFrame, one row per epoch).
    """
    import pandas as pd

    run_dir = Path(run_dir)
    if not (run_dir / "history.csv").is_file():
        raise RunError(f"{run_dir} is not a run directory (no history.csv)")
    return {
        "run_dir": run_dir,
        "config": (run_dir / "config.yaml").read_text(),
        "metrics": read_json(run_dir / "metrics.json") or {},
        "history": pd.DataFrame(read_history(run_dir / "history.csv")),
    }


# --------------------------------------------------------------------------- the backup


def read_backup(backup_dir):
    """`{epochs completed: entry}` of the backup in `backup_dir` ({} if none).

    An entry names the epoch's weights and random-state files and holds the state of early
    stopping and of the best checkpoint (see `fashion_keras.callbacks.RunState`).
    """
    state = read_json(Path(backup_dir) / "state.json")
    return {int(k): v for k, v in state["epochs"].items()} if state else {}


def random_state_variables(model):
    """The model's variables that are not weights: the layers' random-number state."""
    weights = {id(v) for v in model.weights}
    return [v for v in model.variables if id(v) not in weights]


def restore_backup(model, backup_dir, epoch):
    """Loads the backup of `epoch` into a compiled `model`: weights, optimizer, random state.

    Returns:
        The backup's entry for `epoch` (see `read_backup`).
    """
    import numpy as np

    entries = read_backup(backup_dir)
    if epoch not in entries:
        raise RunError(f"{backup_dir} holds no backup of epoch {epoch} (has {sorted(entries)})")
    entry = entries[epoch]
    model.optimizer.build(model.trainable_variables)  # so its state has somewhere to go
    model.load_weights(Path(backup_dir) / entry["weights"])
    with np.load(Path(backup_dir) / entry["random_state"]) as saved:
        values = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    variables = random_state_variables(model)
    if [v.shape for v in variables] != [tuple(a.shape) for a in values]:
        raise RunError(f"{backup_dir}: the random state of epoch {epoch} does not fit this model")
    for variable, value in zip(variables, values, strict=True):
        variable.assign(value)
    return entry


# --------------------------------------------------------------------------- saved models


def load_run_model(run_dir, data_dir=None, checkpoint="model.keras"):
    """A finished run's saved model (Keras safe mode) and its test set.

    Args:
        run_dir: the run directory.
        data_dir: where the data are (default: searched, see `fashion_keras.data`).
        checkpoint: `model.keras` (the final model) or `best.keras`.

    Returns:
        `(model, x_test, y_test)`, the test set limited as the run's config says.
    """
    import keras

    import fashion_keras.layers  # noqa: F401  (registers the project's layers for load_model)
    from fashion_keras.config import load_config
    from fashion_keras.data import load_data

    run_dir = Path(run_dir)
    path = run_dir / checkpoint
    if not path.is_file():
        raise RunError(f"{path} not found; is {run_dir} a finished run directory?")
    config = load_config(run_dir / "config.yaml")
    _, _, (x_test, y_test) = load_data(data_dir, **dataclasses.asdict(config.data))
    return keras.saving.load_model(path, safe_mode=True), x_test, y_test


def evaluate_run(run_dir, data_dir=None, checkpoint="model.keras"):
    """Evaluates a run's saved model on its test set.

    Returns:
        `{"test_loss": ..., "test_accuracy": ...}`.

    Example:
        >>> evaluate_run("runs/baseline")["test_accuracy"]
    """
    model, x_test, y_test = load_run_model(run_dir, data_dir, checkpoint)
    loss, accuracy = model.evaluate(x_test, y_test, batch_size=256, verbose=0)
    return {"test_loss": float(loss), "test_accuracy": float(accuracy)}
