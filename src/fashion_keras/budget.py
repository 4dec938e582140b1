"""Training to a time budget: measure the speed, then fix the epochs that fit.

Users think "I have 5 minutes", not in epochs. With `training.time_budget_s` a run first
trains a few batches and validates once to measure its speed on this machine, puts the
model back exactly as it was, and fixes how many epochs fit between now and the budget,
leaving room for the test evaluation and the final writes. The learning rate then anneals
to zero over exactly that horizon (`training.lr_schedule`: budget-aware schedules, Li,
Yumer & Ramanan, "Budgeted Training", ICLR 2020). The decision is a plain epoch count, so
the run it produced can be repeated with `--config RUN/config.yaml`. A budget that cannot
fit one epoch is refused before training.

The budget counts what the caller's clock counts: from the call of `train()` in Python, and
from process start on the command line.
"""

import dataclasses
import math
import time
from pathlib import Path

import keras
import numpy as np

from fashion_keras import files
from fashion_keras.callbacks import AnnealLearningRate
from fashion_keras.data import make_dataset
from fashion_keras.rundir import RunError

WARMUP_STEPS = 40  # timed training batches (the first few, which trace, are not counted)
TRACE_CALLS = 3  # the first calls of the training function trace it: not timed
SAFETY = 0.97  # plan for this share of the time left: epochs vary by a few percent here
EXIT_S = 1.0  # after the test result: metrics, printing and the process's exit


@dataclasses.dataclass
class Plan:
    time_budget_s: float
    epochs: int
    seconds_per_step: float  # one training batch, measured
    validation_s: float  # one pass over the validation set, measured
    writes_s: float  # the checkpoint and backup an epoch writes, measured
    seconds_per_epoch: float  # all of the above for one epoch
    planned_at_s: float  # seconds on the run's clock when the plan was made
    expected_end_s: float  # when the test result is expected, on the run's clock
    train_images_per_s: float


def with_epochs(config, epochs):
    """`config` with a fixed number of epochs instead of a time budget."""
    training = dataclasses.replace(config.training, epochs=epochs, time_budget_s=None)
    return dataclasses.replace(config, training=training)


def plan_epochs(
    model, config, train_data, validation, test_size, global_batch, scratch_dir, elapsed_s
):
    """Measures a compiled `model` on this machine and decides how many epochs fit.

    The model's weights, optimizer and random state are restored afterwards, so the run
    that follows is the same as one configured with the chosen epochs from the start.

    Args:
        model: the compiled model, before any training (call inside the strategy's scope).
        config: the run's `Config`, with `training.time_budget_s` set.
        train_data: `(x_train, y_train)`.
        validation: `(x_val, y_val)`.
        test_size: images in the test set (its evaluation is timed from validation's).
        global_batch: the batch size across replicas.
        scratch_dir: a directory to create and time the writes in (removed afterwards).
        elapsed_s: a function returning the seconds the budget has counted so far.

    Returns:
        A `Plan` of at least one epoch.

    Raises:
        RunError: not even one epoch fits the budget; the message says what would.
    """
    snapshot = _snapshot(model)
    seconds_per_step = _time_steps(model, *train_data, global_batch, config)
    validation_s = _time_validation(model, *validation, global_batch)
    writes_s = _time_writes(model, scratch_dir)
    _restore(snapshot)

    budget_s = config.training.time_budget_s
    steps = math.ceil(len(train_data[0]) / global_batch)
    epoch_s = steps * seconds_per_step + validation_s + writes_s
    final_s = validation_s * test_size / len(validation[0]) + writes_s + EXIT_S
    now = elapsed_s()
    epochs = epochs_within(budget_s - now - final_s, epoch_s)
    if epochs < 1:
        needed = now + final_s + epoch_s / SAFETY
        raise RunError(
            f"training.time_budget_s={budget_s:g} cannot fit one epoch here: starting and "
            f"measuring took {now:.1f} s, an epoch takes {epoch_s:.1f} s and the test and "
            f"final writes {final_s:.1f} s; give at least {math.ceil(needed)} s, or set "
            "training.epochs"
        )
    return Plan(
        time_budget_s=budget_s,
        epochs=epochs,
        seconds_per_step=round(seconds_per_step, 5),
        validation_s=round(validation_s, 3),
        writes_s=round(writes_s, 3),
        seconds_per_epoch=round(epoch_s, 2),
        planned_at_s=round(now, 2),
        expected_end_s=round(now + epochs * epoch_s + final_s, 1),
        train_images_per_s=round(global_batch / seconds_per_step, 1),
    )


def epochs_within(seconds, epoch_s):
    """The most whole epochs of `epoch_s` seconds that fit in SAFETY x `seconds`."""
    return max(0, math.floor(SAFETY * seconds / epoch_s))


def describe(plan):
    """One line for the log: what was measured and what was decided."""
    fits = "" if plan.expected_end_s <= plan.time_budget_s else " (more than the budget allows)"
    return (
        f"Time budget {plan.time_budget_s:g} s: {plan.planned_at_s:.1f} s used to start and "
        f"measure; {plan.seconds_per_epoch:.1f} s per epoch ({plan.train_images_per_s:,.0f} "
        f"images/s) -> {plan.epochs} epoch(s), test result expected at about "
        f"{plan.expected_end_s:.0f} s{fits}"
    )


def _snapshot(model):
    model.optimizer.build(model.trainable_variables)
    variables = [*model.variables, *model.optimizer.variables]
    return variables, [v.numpy() for v in variables]


def _restore(snapshot):
    for variable, value in zip(*snapshot, strict=True):
        variable.assign(value)


class _BatchClock(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.started = time.perf_counter()
        self.ends = []

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter())


def _time_steps(model, x, y, global_batch, config):
    """Seconds per training batch: the mean after the first calls (which trace), with the
    learning-rate callback the run sets every call with.

    Keras calls back once per call of the training function, which runs
    `training.steps_per_execution` batches; the last call, which may run fewer, is not
    timed. The warm-up ends with a batch of the epoch's last, smaller size, so the real run
    does not trace again there.
    """
    per_call = config.training.steps_per_execution
    wanted = max(WARMUP_STEPS, (TRACE_CALLS + 5) * per_call)
    full = min(wanted, len(x) // global_batch)
    n = full * global_batch + len(x) % global_batch
    clock = _BatchClock()
    callbacks = [clock]
    t = config.training
    if t.lr_schedule != "constant":  # its per-batch cost, not its rates
        callbacks.append(AnnealLearningRate(t.learning_rate, 10**9, 10**9))
    model.fit(
        make_dataset(x[:n], y[:n], global_batch, config.seed, 0, 1),
        steps_per_epoch=math.ceil(n / global_batch),
        shuffle=False,
        verbose=0,
        callbacks=callbacks,
    )
    durations = np.diff([clock.started, *clock.ends])
    whole = durations[:-1] if len(durations) > 1 else durations  # the last call may be short
    timed = whole[min(TRACE_CALLS, len(whole) - 1) :]
    # The mean, not the median: an epoch's time is the sum of its steps, slow ones included.
    return float(np.mean(timed)) / per_call


def _time_validation(model, x, y, global_batch):
    """Seconds for one evaluation of the validation set, tracing excluded."""
    model.evaluate(x[: global_batch + 1], y[: global_batch + 1], batch_size=global_batch, verbose=0)
    start = time.perf_counter()
    model.evaluate(x, y, batch_size=global_batch, verbose=0)
    return time.perf_counter() - start


def _time_writes(model, scratch_dir):
    """Seconds an epoch spends writing: the best checkpoint and the backup.

    `scratch_dir` is removed afterwards; the run directory names it so that a rerun removes
    it after a kill (`fashion_keras.rundir.remove_leftovers`).
    """
    scratch_dir = Path(scratch_dir)
    scratch_dir.mkdir()
    try:
        start = time.perf_counter()
        model.save(scratch_dir / "model.keras")
        model.save_weights(scratch_dir / "backup.weights.h5")
        return time.perf_counter() - start
    finally:
        files.remove(scratch_dir)
