"""Keras callbacks for runs that are killed and resumed, built on public hooks only.

Each file is written atomically, so a kill at any moment leaves the previous version in
place. `RunState` writes everything a resumed `fit(initial_epoch=k)` needs to continue as
if never stopped (`fashion_keras.rundir.restore_backup` reads it back); `HistoryCSV` keeps
`history.csv` to one row per epoch across resumes; `BestCheckpoint` and `EarlyStopping`
take their state from the backup.
"""

import csv
import io
import math
import time
from pathlib import Path

import keras
import numpy as np

from fashion_keras import rundir
from fashion_keras.files import atomic_path, write_json, write_text


class EpochTimer(keras.callbacks.Callback):
    """Adds `epoch_time` (seconds) to each epoch's logs, so `history.csv` records it."""

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["epoch_time"] = time.perf_counter() - self.started


class TensorBoard(keras.callbacks.TensorBoard):
    """`keras.callbacks.TensorBoard` without the batch summaries `update_freq="epoch"` drops.

    Keras' callback builds a summary for every metric after every batch and, at the default
    `update_freq="epoch"`, records none of them: about 0.7 ms per batch here, 1.2 s of a
    45 s `fast` run. The files written are the same.
    """

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, None if self.update_freq == "epoch" else logs)


class HistoryCSV(keras.callbacks.Callback):
    """`keras.callbacks.CSVLogger` for resumable runs: one row per epoch, written atomically.

    Epochs are numbered from 1. When a resumed `fit` starts at epoch k, rows from epoch k
    on (written before the interruption but not backed up) are dropped, so the file ends
    with each epoch exactly once.
    """

    def __init__(self, filename):
        super().__init__()
        self.filename = Path(filename)

    def on_train_begin(self, logs=None):
        self.rows = None

    def on_epoch_begin(self, epoch, logs=None):
        if self.rows is None:  # first epoch of this fit: past 0 when resumed
            self.rows = [r for r in rundir.read_history(self.filename) if r["epoch"] <= epoch]

    def on_epoch_end(self, epoch, logs=None):
        self.rows.append({"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}})
        out = io.StringIO()
        fields = list(dict.fromkeys(k for row in self.rows for k in row))
        writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        write_text(self.filename, out.getvalue())


def _monitored(logs, monitor, callback):
    if monitor not in (logs or {}):
        raise KeyError(
            f"{callback} monitors {monitor!r}, which this fit does not log; it logs: "
            f"{', '.join(logs or {}) or 'nothing'}"
        )
    return float(logs[monitor])


class BestCheckpoint(keras.callbacks.Callback):
    """Saves the whole model, atomically, whenever `val_loss` (or `monitor`) reaches a new low.

    Args:
        filepath: a `.keras` file.
        monitor: the logged value to minimise.
        initial_best: the best value before this fit (when resuming); None for none.
    """

    def __init__(self, filepath, monitor="val_loss", initial_best=None):
        super().__init__()
        self.filepath = filepath
        self.monitor = monitor
        self.initial_best = initial_best

    def on_train_begin(self, logs=None):
        self.best = math.inf if self.initial_best is None else self.initial_best

    def on_epoch_end(self, epoch, logs=None):
        current = _monitored(logs, self.monitor, "BestCheckpoint")
        if current < self.best:
            self.best = current
            with atomic_path(self.filepath) as tmp:
                self.model.save(tmp)


class EarlyStopping(keras.callbacks.EarlyStopping):
    """`keras.callbacks.EarlyStopping` that can start from a resumed run's state.

    Args:
        initial_wait: epochs without improvement before this fit.
        initial_best: the best monitored value before this fit; None for none.
        **kwargs: `keras.callbacks.EarlyStopping` arguments.
    """

    def __init__(self, initial_wait=0, initial_best=None, **kwargs):
        super().__init__(**kwargs)
        self.initial_wait = initial_wait
        self.initial_best = initial_best

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.wait = self.initial_wait
        if self.initial_best is not None:
            self.best = self.initial_best


class AnnealLearningRate(keras.callbacks.Callback):
    """Sets the optimizer's learning rate before every batch, annealing it to zero.

    Progress `p` runs from 0 at the first step to 1 at `total_steps`; the rate is
    `learning_rate * (1 + cos(pi * p)) / 2` (`"cosine"`) or `learning_rate * (1 - p)`
    (`"linear"`). A function of the step alone, so a resumed run continues the same curve,
    and the horizon can be fixed after a measured warm-up (budgeted training).
    """

    def __init__(self, learning_rate, total_steps, steps_per_epoch, shape="cosine"):
        super().__init__()
        self.learning_rate = learning_rate
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch
        self.shape = shape

    def rate(self, step):
        progress = min(step / self.total_steps, 1.0)
        if self.shape == "linear":
            return self.learning_rate * (1 - progress)
        return self.learning_rate * (1 + math.cos(math.pi * progress)) / 2

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        self.model.optimizer.learning_rate = self.rate(self.epoch * self.steps_per_epoch + batch)


class RunState(keras.callbacks.Callback):
    """Backs up, after every epoch, all a resumed `fit(initial_epoch=...)` needs.

    Per epoch: the weights with the optimizer's state (`epoch-NNNN.weights.h5`), the
    random-number state of the layers (`epoch-NNNN.random.npz`: dropout masks and
    augmentation continue as if never stopped), and in `state.json` (written last,
    atomically) whether training stopped and the state of early stopping and of the best
    checkpoint. The last two epochs are kept, so workers of a multi-worker job that stopped
    one epoch apart can all resume from the earlier one.

    Put it last in the callback list: an epoch counts as done once every other callback has
    run for it.
    """

    def __init__(self, backup_dir, early_stopping=None, checkpoint=None):
        super().__init__()
        self.backup_dir = Path(backup_dir)
        self.early_stopping = early_stopping
        self.checkpoint = checkpoint

    def on_epoch_end(self, epoch, logs=None):
        done = epoch + 1
        entry = {
            "weights": f"epoch-{done:04d}.weights.h5",
            "random_state": f"epoch-{done:04d}.random.npz",
            "stop_training": bool(self.model.stop_training),
            "best_val_loss": self.checkpoint.best if self.checkpoint else None,
            "early_stopping": None,
        }
        if self.early_stopping is not None:
            best = self.early_stopping.best
            entry["early_stopping"] = {
                "wait": int(self.early_stopping.wait),
                "best": None if best is None else float(best),
            }
        with atomic_path(self.backup_dir / entry["weights"]) as tmp:
            self.model.save_weights(tmp)
        with atomic_path(self.backup_dir / entry["random_state"]) as tmp:
            np.savez(tmp, *[v.numpy() for v in rundir.random_state_variables(self.model)])
        entries = rundir.read_backup(self.backup_dir)
        kept = {str(done - 1): entries[done - 1]} if done - 1 in entries else {}
        kept[str(done)] = entry
        write_json(self.backup_dir / "state.json", {"epochs": kept})
        names = {name for e in kept.values() for name in (e["weights"], e["random_state"])}
        for old in self.backup_dir.glob("epoch-*"):
            if old.name not in names:
                old.unlink()
