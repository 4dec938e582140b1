"""The run directory: who may write it, what it holds, and reading it back.

A run directory holds `config.yaml` (written once the epochs are known), with a time budget
`plan.json` (just before it), `history.csv` (a row per epoch), `best.keras` (the best epoch
so far, once that epoch is committed), `logs/` (TensorBoard), `backup/` (while the run is
unfinished), and at the end `model.keras` and `metrics.json` (written last: its presence
means the run is complete). An ensemble (`training.members`, see `fashion_keras.ensemble`)
holds `config.yaml`, a run directory per member (`member-1/`, ...) and at the end its own
`model.keras` and `metrics.json`.

The contract: a run directory is new, empty, or one of ours (it holds our `config.yaml` or
`plan.json`); one process writes it at a time (`claim`); only the exact temporaries we
write are ever cleaned, and only where we write them (`remove_leftovers`).
"""

import contextlib
import csv
import dataclasses
import json
import os
import re
from pathlib import Path

from fashion_keras import files
from fashion_keras.errors import UserError

PLAIN_LOSS = "crossentropy"  # the metric that keeps the unsmoothed loss (train.metrics_for)
SCRATCH = ".budget.part"  # the budget's warm-up writes here (see fashion_keras.budget)
# The files a run writes, in the run directory and in its backup (as regular expressions).
RUN_FILES = r"config\.yaml|plan\.json|history\.csv|best\.keras|model\.keras|metrics\.json"
BACKUP_FILES = r"state\.json|epoch-\d+\.(weights\.h5|random\.npz|best\.keras)"


class RunError(UserError):
    """The run directory cannot be used as asked."""


@dataclasses.dataclass
class TrainResult:
    """What `fashion_keras.train.train` returns."""

    model: object  # the keras.Model the run evaluated and saved
    history: object  # a pandas DataFrame, one row per epoch, as in history.csv
    metrics: dict  # as in metrics.json
    run_dir: Path
    logits: dict | None = None  # "validation" and "test": the evaluated network's outputs


def default_output(run_name):
    """Where a run goes when no `--output` is given: `runs/<run_name>-<timestamp>`."""
    from datetime import datetime

    return Path("runs") / f"{run_name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def check_ownership(run_dir):
    """Raises `RunError` unless `run_dir` is absent, empty or one of ours, and unfinished.

    Reads only: a check that fails leaves everything as it was.
    """
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise RunError(f"--output {run_dir} is a file, not a directory; choose another --output")
    if (run_dir / "metrics.json").exists():
        raise RunError(
            f"{run_dir} already holds a finished run (metrics.json); choose another --output"
        )
    names = [p.name for p in run_dir.iterdir()]
    ours = {"config.yaml", "plan.json"} & set(names)
    leftovers = [n for n in names if n != SCRATCH and not files.is_temporary(n, RUN_FILES)]
    if leftovers and not ours:
        raise RunError(
            f"--output {run_dir} is not empty and holds no fashion_keras run (no config.yaml); "
            "choose a new or empty directory"
        )


@contextlib.contextmanager
def claim(run_dir):
    """Creates `run_dir` if needed and holds it for this process alone while the block runs.

    The lock is the operating system's (`flock` on the directory itself): it writes no file
    and dies with its process, so a killed run never leaves a stale lock. A directory this
    call created is removed again if the block fails before writing anything into it.

    Raises:
        RunError: another process holds the directory.
    """
    import fcntl

    run_dir = Path(run_dir)
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir, os.O_RDONLY)
    except OSError as e:
        raise RunError(f"cannot create the run directory {run_dir}: {e.strerror or e}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunError(
                f"another process is writing {run_dir}; wait for it to finish, or choose "
                "another --output"
            ) from None
        except OSError as e:  # a file system without flock (some network or FUSE mounts)
            raise RunError(
                f"cannot lock the run directory {run_dir} ({e.strerror or e}); choose an "
                "--output on a local disk"
            ) from None
        yield run_dir
    except BaseException:
        if created and run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()
        raise
    finally:
        os.close(fd)


def tidy_finished(run_dir):
    """Removes the backup a run kept when it was killed between writing `metrics.json` (the
    run is complete) and removing `backup/`. Touches only a finished run of ours: our
    `state.json` in the backup, and only the files a backup of ours holds."""
    run_dir = Path(run_dir)
    backup = run_dir / "backup"
    if not ((run_dir / "metrics.json").is_file() and (backup / "state.json").is_file()):
        return
    try:
        if not read_backup(backup):
            return  # not a backup of ours
    except (ValueError, KeyError, TypeError, AttributeError):
        return  # nor this
    with claim(run_dir):
        for entry in backup.iterdir():
            if re.fullmatch(BACKUP_FILES, entry.name) and entry.is_file():
                files.remove(entry)
        files.remove_temporaries(backup, BACKUP_FILES)
        if not any(backup.iterdir()):
            files.remove(backup)


def remove_leftovers(run_dir):
    """Deletes what a killed process of ours can leave: our temporaries in the run directory
    and its backup, and the budget's scratch directory. Nothing else."""
    run_dir = Path(run_dir)
    files.remove_temporaries(run_dir, RUN_FILES)
    files.remove_temporaries(run_dir / "backup", BACKUP_FILES)
    files.remove(run_dir / SCRATCH)


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
    if (run_dir / "member-1").is_dir():
        raise RunError(
            f"{run_dir} holds an ensemble, whose members are runs: name one, e.g. "
            f"{run_dir / 'member-1'} (`fashion-keras evaluate {run_dir}` scores the ensemble)"
        )
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

    An entry names the epoch's weights and random-state files, says whether training
    stopped, and holds each resumable callback's state under `pieces` (see
    `fashion_keras.callbacks.RunState`).
    """
    state = read_json(Path(backup_dir) / "state.json")
    return {int(k): v for k, v in state["epochs"].items()} if state else {}


def backup_files(entry):
    """The files of the backup directory that a backup entry (see `read_backup`) needs."""
    pieces = [p["file"] for p in entry["pieces"].values() if p and p.get("file")]
    return {entry["weights"], entry["random_state"], *pieces}


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
    if "pieces" not in entry:
        raise RunError(
            f"{backup_dir} was written by fashion_keras 0.2.0, whose backups do not resume "
            "here; finish the run with 0.2.0, or train into a new --output"
        )
    missing = [n for n in sorted(backup_files(entry)) if not (Path(backup_dir) / n).is_file()]
    if missing:
        raise RunError(
            f"{backup_dir} is damaged: {', '.join(missing)} (epoch {epoch}) not found; train "
            "into a new --output"
        )
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
    from fashion_keras.config import load_config
    from fashion_keras.data import load_data
    from fashion_keras.models import load_model

    run_dir = Path(run_dir)
    path = run_dir / checkpoint
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: no such run directory (train's --output)")
    if not (run_dir / "config.yaml").is_file():
        raise RunError(f"{run_dir}/config.yaml not found; is {run_dir} a run directory?")
    config = load_config(run_dir / "config.yaml")
    if not path.is_file():
        unsaved = config.training.members > 1 and checkpoint == "best.keras"
        why = "an ensemble saves no best.keras" if unsaved else f"is {run_dir} a finished run?"
        raise RunError(f"{path} not found; {why}")
    _, _, (x_test, y_test) = load_data(data_dir, **dataclasses.asdict(config.data))
    return load_model(path), x_test, y_test


def scores(model, x, y, batch_size):
    """`(loss, accuracy)` of a compiled `model` on `(x, y)`. The loss is the plain
    cross-entropy, also for a model trained with label smoothing: its compiled loss is
    smoothed, and its `PLAIN_LOSS` metric is not."""
    result = model.evaluate(x, y, batch_size=batch_size, verbose=0, return_dict=True)
    return result.get(PLAIN_LOSS, result["loss"]), result["accuracy"]


def evaluate_run(run_dir, data_dir=None, checkpoint="model.keras"):
    """Evaluates a run's saved model on its test set.

    Returns:
        `{"test_loss": ..., "test_accuracy": ...}`.

    Example:
        >>> evaluate_run("runs/baseline")["test_accuracy"]
    """
    model, x_test, y_test = load_run_model(run_dir, data_dir, checkpoint)
    loss, accuracy = scores(model, x_test, y_test, batch_size=256)
    return {"test_loss": float(loss), "test_accuracy": float(accuracy)}
