"""Keras callbacks for runs that are killed and resumed, built on public hooks only.

Each file is written atomically, so a kill at any moment leaves the previous version in
place. `RunState` writes everything a resumed `fit(initial_epoch=k)` needs to continue as
if never stopped (`fashion_keras.rundir.restore_backup` reads it back); `HistoryCSV` keeps
`history.csv` to one row per epoch across resumes; `BestCheckpoint` and `EarlyStopping` own
their resumable state, hand it to `RunState`'s commit and take it back with `set_state`.
"""

import csv
import io
import math
import time
from pathlib import Path

import keras
import numpy as np

from fashion_keras import files, rundir
from fashion_keras.errors import raise_pending_interrupt


class RaisePendingInterrupt(keras.callbacks.Callback):
    """Stops `fit` after the batch on a Ctrl-C or SIGTERM whose exception Python swallowed
    (see `fashion_keras.errors.on_signal`); one swallowed after the last batch is
    `fashion_keras.train.resumable`'s to raise, as `fit` returns."""

    def on_train_batch_end(self, batch, logs=None):
        raise_pending_interrupt()


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
        files.write_text(self.filename, out.getvalue())


def _monitored(logs, monitor, callback):
    if monitor not in (logs or {}):
        raise KeyError(
            f"{callback} monitors {monitor!r}, which this fit does not log; it logs: "
            f"{', '.join(logs or {}) or 'nothing'}"
        )
    return float(logs[monitor])


class BestCheckpoint(keras.callbacks.Callback):
    """Keeps the model of the epoch with the lowest `val_loss` (or `monitor`) as `filepath`.

    An epoch that improves saves the whole model into the backup directory first; only
    after `RunState` has committed that epoch is it copied to `filepath`, so `filepath`
    always holds an epoch the run directory records as done. Its resumable state (the best
    value and that file) comes and goes through `get_state` and `set_state`.

    Args:
        filepath: a `.keras` file.
        backup_dir: where the candidates wait for their epoch's commit.
        monitor: the logged value to minimise.
    """

    def __init__(self, filepath, backup_dir, monitor="val_loss"):
        super().__init__()
        self.filepath = Path(filepath)
        self.backup_dir = Path(backup_dir)
        self.monitor = monitor
        self.resumed = {}

    def get_state(self):
        """`{"best": value or None, "file": the best model's file in the backup or None}`."""
        best = None if math.isinf(self.best) else float(self.best)
        return {"best": best, "file": self.best_file}

    def set_state(self, state):
        """Takes back a committed state, and publishes its model (a kill may have come
        between the commit and the copy)."""
        self.resumed = state or {}
        if self.resumed.get("file"):
            files.copy_file(self.backup_dir / self.resumed["file"], self.filepath)

    def on_train_begin(self, logs=None):
        best = self.resumed.get("best")
        self.best = math.inf if best is None else best
        self.best_file = self.resumed.get("file")

    def on_epoch_end(self, epoch, logs=None):
        current = _monitored(logs, self.monitor, "BestCheckpoint")
        if current < self.best:
            self.best = current
            self.best_file = f"epoch-{epoch + 1:04d}.best.keras"
            with files.atomic_path(self.backup_dir / self.best_file) as tmp:
                self.model.save(tmp)

    def on_commit(self, epoch):
        """Called by `RunState` once `epoch`'s state is durable."""
        if self.best_file == f"epoch-{epoch + 1:04d}.best.keras":
            files.copy_file(self.backup_dir / self.best_file, self.filepath)


class EarlyStopping(keras.callbacks.EarlyStopping):
    """`keras.callbacks.EarlyStopping` that a resumed run continues.

    Its resumable state (epochs waited, the best value) comes and goes through `get_state`
    and `set_state`; `keras.callbacks.EarlyStopping` arguments otherwise.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.resumed = {}

    def get_state(self):
        finite = self.best is not None and math.isfinite(self.best)
        return {"wait": int(self.wait), "best": float(self.best) if finite else None}

    def set_state(self, state):
        self.resumed = state or {}

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.wait = self.resumed.get("wait", 0)
        if self.resumed.get("best") is not None:
            self.best = self.resumed["best"]


WSD_COOLDOWN = 0.2  # the share of the steps after the warm-up over which "wsd" anneals


def wsd_anneal_start(total_steps, warmup_steps):
    """The first step whose rate under `"wsd"` depends on `total_steps`."""
    return warmup_steps + math.floor((1 - WSD_COOLDOWN) * (total_steps - warmup_steps))


class AnnealLearningRate(keras.callbacks.Callback):
    """Sets the optimizer's learning rate before every batch: a warm-up, then the anneal.

    Over the first `warmup_steps` the rate rises linearly to `learning_rate` (step s gets
    `(s + 1) / warmup_steps` of it). From there progress `p` runs from 0 to 1 at
    `total_steps`; the rate is `learning_rate * (1 + cos(pi * p)) / 2` (`"cosine"`),
    `learning_rate * (1 - p)` (`"linear"`) or `learning_rate` (`"constant"`). `"wsd"`
    (warm-up, stable, decay) holds `learning_rate` until the last `WSD_COOLDOWN` of the
    progress and anneals linearly to zero over it (Hägele et al., "Scaling Laws and
    Compute-Optimal Training Beyond Fixed Training Durations", 2024: as good as cosine).

    A function of the step alone, so a resumed run continues the same curve. The warm-up,
    and `"wsd"`'s stable rate (before `wsd_anneal_start`), do not depend on `total_steps`:
    a time budget plans the horizon again after the warm-up, and then after every epoch
    (see `fashion_keras.budget`). Within the anneal, `stretch`
    moves the end: the rest of the curve, from the step it is called at, is stretched (or
    squeezed) onto the new end, so the rate is continuous and the steps before keep theirs.
    `stretches`, the `(step, total_steps before)` of each earlier stretch, repeats them.
    """

    def __init__(
        self,
        learning_rate,
        total_steps,
        steps_per_epoch,
        shape="cosine",
        warmup_steps=0,
        stretches=(),
    ):
        super().__init__()
        self.learning_rate = learning_rate
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch
        self.shape = shape
        self.warmup_steps = warmup_steps
        self.stretches = list(stretches)

    def stretch(self, step, total_steps):
        """From `step` on, the rest of the curve ends at `total_steps` instead."""
        self.stretches.append((step, self.total_steps))
        self.total_steps = total_steps

    def rate(self, step):
        if step < self.warmup_steps:
            return self.learning_rate * (step + 1) / self.warmup_steps
        first_end, step = self._unstretched(step)
        progress = min((step - self.warmup_steps) / (first_end - self.warmup_steps), 1.0)
        if self.shape == "wsd":
            return self.learning_rate * min(1.0, (1 - progress) / WSD_COOLDOWN)
        if self.shape == "linear":
            return self.learning_rate * (1 - progress)
        if self.shape == "constant":
            return self.learning_rate
        return self.learning_rate * (1 + math.cos(math.pi * progress)) / 2

    def _unstretched(self, step):
        """The first curve's end, and the step on it whose rate `step` gets: each stretch,
        latest first, maps the steps after its own linearly back onto the end it moved."""
        ends = [before for _, before in self.stretches] + [self.total_steps]
        for (at, before), after in reversed(list(zip(self.stretches, ends[1:], strict=True))):
            if step > at:
                step = at + (step - at) * (before - at) / (after - at)
        return ends[0], step

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        self.model.optimizer.learning_rate = self.rate(self.epoch * self.steps_per_epoch + batch)


class StopAtStep(keras.callbacks.Callback):
    """Stops training after step `total_steps` (counted from the first epoch's first), so
    that a fractional `training.epochs` cuts the last epoch short; it still validates. With
    `steps_per_execution` batches a call, Keras calls back after each call: the run stops
    with the call that holds the step."""

    def __init__(self, total_steps, steps_per_epoch):
        super().__init__()
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch * self.steps_per_epoch + batch + 1 >= self.total_steps:
            self.model.stop_training = True


class Lookahead(keras.callbacks.Callback):
    """Lookahead (Zhang et al., 2019) over whole compiled calls: after each call of
    `steps_per_execution` batches the trained ("fast") weights step back to
    `slow + step_size * (fast - slow)`, which become the next call's slow weights.

    The optimizer's own state (Adam's moments) is left as it is, and only trainable
    weights take part (batch normalisation's statistics stay as trained). Keras calls back
    after each call, and a run's calls divide its epochs (`train.whole_calls`), so at every
    epoch's end the weights are the slow ones: what a backup holds, and all a resumed run
    needs. `step_size` is TF Addons' `slow_step_size`, the paper's alpha.
    """

    def __init__(self, step_size):
        super().__init__()
        self.step_size = step_size

    def on_train_begin(self, logs=None):
        # From a copy: on TensorFlow, a Variable made from another's value shares its storage,
        # and the optimizer's in-place updates would move both.
        self.slow = [
            keras.Variable(np.array(keras.ops.convert_to_numpy(v)), trainable=False)
            for v in self.model.trainable_variables
        ]

    def on_train_batch_end(self, batch, logs=None):
        for variable, slow in zip(self.model.trainable_variables, self.slow, strict=True):
            slow.assign(slow.value + self.step_size * (variable.value - slow.value))
            variable.assign(slow.value)


class RunState(keras.callbacks.Callback):
    """Commits, after every epoch, all a resumed `fit(initial_epoch=...)` needs.

    The model's own state is saved per epoch: its weights with the optimizer's state
    (`epoch-NNNN.weights.h5`) and the random-number state of its layers
    (`epoch-NNNN.random.npz`: dropout masks and augmentation continue as if never stopped).
    Each other resumable piece owns its state and hands it over through `get_state()`; the
    commit is `state.json`, written last and atomically, which records them together. Then
    each piece with an `on_commit(epoch)` hears that the epoch is durable, and files no
    longer named are deleted. The last two epochs are kept, so workers of a multi-worker job
    that stopped one epoch apart can all resume from the earlier one.

    The batch order and the learning rate need no state: both are functions of the epoch
    and step (see `fashion_keras.data.make_dataset` and `AnnealLearningRate`).

    Put it last in the callback list: an epoch counts as done once every other callback has
    run for it.

    Args:
        backup_dir: the backup directory.
        pieces: `{name: callback}`, each with `get_state()` returning a JSON-able dict that
            may name files of the backup directory under `"file"`.
    """

    def __init__(self, backup_dir, pieces=None):
        super().__init__()
        self.backup_dir = Path(backup_dir)
        self.pieces = dict(pieces or {})

    def on_epoch_end(self, epoch, logs=None):
        done = epoch + 1
        entry = {
            "weights": f"epoch-{done:04d}.weights.h5",
            "random_state": f"epoch-{done:04d}.random.npz",
            "stop_training": bool(self.model.stop_training),
            "pieces": {name: piece.get_state() for name, piece in self.pieces.items()},
        }
        with files.atomic_path(self.backup_dir / entry["weights"]) as tmp:
            self.model.save_weights(tmp)
        with files.atomic_path(self.backup_dir / entry["random_state"]) as tmp:
            np.savez(tmp, *[v.numpy() for v in rundir.random_state_variables(self.model)])
        entries = rundir.read_backup(self.backup_dir)
        kept = {str(done - 1): entries[done - 1]} if done - 1 in entries else {}
        kept[str(done)] = entry
        files.write_json(self.backup_dir / "state.json", {"epochs": kept})  # the commit
        for piece in self.pieces.values():
            if hasattr(piece, "on_commit"):
                piece.on_commit(epoch)
        named = set().union(*map(rundir.backup_files, kept.values()))
        for old in sorted(self.backup_dir.glob("epoch-*")):
            if old.name not in named:
                files.remove(old)
