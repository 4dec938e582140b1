"""Training to a time budget: measure the speed, then fix the epochs that fit.

Users think "I have 5 minutes", not in epochs. With `training.time_budget_s` a run first
trains a few batches and validates once to measure its speed on this machine, puts the
model back exactly as it was, and fixes how many epochs fit between now and the budget,
leaving room for the test evaluation and the final writes; to a hundredth of an epoch, the
last one cut short, so that a budget of a few epochs is not left a whole one early
(`epochs_within`). The learning rate then anneals
to zero over exactly that horizon (`training.lr_schedule`: budget-aware schedules, Li,
Yumer & Ramanan, "Budgeted Training", ICLR 2020). The decision is a plain epoch count, so
the run it produced can be repeated with `--config RUN/config.yaml`. A budget that cannot
fit one epoch is refused before training.

That first measure is of a few batches. With `training.warmup_epochs`, whose rising rate
does not depend on the horizon, the epochs are planned again once the warm-up has run, from
its measured epochs (validation and all) and the time actually left, so that a run uses its
budget rather than a margin for the first guess (`replan`). A re-plan also takes the time of
a validation pass, and with it the reserve for the test, from the passes the run has made.
With an annealed `training.lr_schedule` the epochs are planned again after every epoch, from
the pace of the latest: until the anneal begins (for `"wsd"`, its last fifth) the new end only
moves the anneal; within it (for `"cosine"` and `"linear"`, from the warm-up's end), the rest
of the rate's curve is stretched (or squeezed) onto the new end, and the config records where
(`training.lr_stretches`), so that it still repeats the run.

The budget counts what the caller's clock counts: from the call of `train()` in Python, and
from process start on the command line.
"""

import dataclasses
import math
import time
from pathlib import Path

import keras
import numpy as np

from fashion_keras import files, models
from fashion_keras.callbacks import WSD_COOLDOWN, AnnealLearningRate, StopAtStep, wsd_anneal_start
from fashion_keras.config import with_larger_model
from fashion_keras.data import make_dataset
from fashion_keras.layers import AddMoves
from fashion_keras.rundir import RunError

WARMUP_STEPS = 40  # training batches the plan trains to time a step, the untimed first call's too
# Only the first call traces, at 1 and at 10 batches a call (docs/results.md, fourteenth
# session): it is left out, the calls after it are timed, at least TIMED_CALLS of them.
TRACE_CALLS = 1
TIMED_CALLS = 3
SAFETY = 0.97  # plan for this share of the time left: epochs vary by a few percent here
EXIT_S = 1.0  # after the test result: metrics, printing and the process's exit
# The test and final writes have taken up to 1.8 times their measure on a noisy 2-core
# machine (docs/results.md, 2026-12-02): the reserve for them is half as large again.
FINAL_MARGIN = 1.5
# A budget too small on the first measure is measured once more before it is refused: a
# burst of that noise has doubled a 40-batch measure there (60-second runs, 2026-12-02).
MEASURES = 2


@dataclasses.dataclass
class Plan:
    time_budget_s: float
    epochs: float  # a fraction cuts the last epoch short
    seconds_per_step: float  # one training batch, measured
    validation_s: float  # one pass over the validation set, measured
    writes_s: float  # the checkpoint and backup an epoch writes, measured
    seconds_per_epoch: float  # all of the above for one epoch
    planned_at_s: float  # seconds on the run's clock when the plan was made
    expected_end_s: float  # when the test result is expected, on the run's clock
    train_images_per_s: float
    final_s: float = 0.0  # the test evaluation, the temperature, the final writes, the exit
    final_passes: float | None = None  # what the end predicts, in validation passes
    warmup_epochs: int = 0  # planned again after these (see `replan`)
    first_epochs: float | None = None  # the epochs planned before the warm-up, once re-planned
    previous_epochs: float | None = None  # the epochs planned before the latest re-plan
    replanned_at_s: float | None = None  # seconds on the run's clock when last re-planned
    replanned_after_epochs: int | None = None  # the epochs trained by then
    lr_horizon_epochs: float | None = None  # the planned epochs, when the deadline cut them
    lr_stretches: list | None = None  # [epochs done, epochs planned before] of each anneal re-plan
    stopped_at_s: float | None = None  # seconds on the run's clock when the deadline stopped it
    smaller_model_epochs: float | None = None  # what the config's `model` fitted, when the
    # plan chose its `larger_model` (see `wants_larger_model`)


def record(time_budget_s, planned_now, wall_time_s):
    """What `metrics.json` says of a time budget: asked (None without one) and kept (None
    when an earlier process planned it: the run's time was split between processes)."""
    kept = wall_time_s <= time_budget_s if time_budget_s and planned_now else None
    if kept is False:
        print(
            f"Time budget exceeded: the test result came at {wall_time_s:.1f} s of "
            f"{time_budget_s:g} s",
            flush=True,
        )
    return {"time_budget_s": time_budget_s, "budget_kept": kept}


def with_epochs(config, epochs, lr_horizon_epochs=None, lr_stretches=None):
    """`config` with a fixed number of epochs instead of a time budget."""
    training = dataclasses.replace(
        config.training,
        epochs=epochs,
        time_budget_s=None,
        lr_horizon_epochs=lr_horizon_epochs,
        lr_stretches=lr_stretches or None,
    )
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
    budget_s, warmup = config.training.time_budget_s, config.training.warmup_epochs
    steps = math.ceil(len(train_data[0]) / global_batch)
    for _ in range(MEASURES):
        seconds_per_step, validation_s, writes_s = _measure(
            model, config, train_data, validation, global_batch, scratch_dir
        )
        train_s, fixed_s = steps * seconds_per_step, validation_s + writes_s
        # The test evaluation and the validation logits the temperature is fitted on.
        final_passes = final_views(config) * (1 + test_size / len(validation[0]))
        final_s = final_seconds(validation_s, final_passes, writes_s)
        now = elapsed_s()
        epochs = epochs_within(budget_s - now - final_s, train_s, fixed_s)
        if epochs >= warmup + 1:
            break
    else:
        needed = now + final_s + (warmup + 1) * (train_s + fixed_s) / SAFETY
        what = f"the {warmup} warm-up epoch(s) and one more" if warmup else "one epoch"
        raise RunError(
            f"training.time_budget_s={budget_s:g} cannot fit {what} here: starting and "
            f"measuring took {now:.1f} s, an epoch takes {train_s + fixed_s:.1f} s and the "
            f"test and final writes {final_s:.1f} s; give at least {math.ceil(needed)} s, or "
            "set training.epochs"
        )
    return Plan(
        time_budget_s=budget_s,
        epochs=epochs,
        seconds_per_step=round(seconds_per_step, 5),
        validation_s=round(validation_s, 3),
        writes_s=round(writes_s, 3),
        seconds_per_epoch=round(train_s + fixed_s, 2),
        planned_at_s=round(now, 2),
        expected_end_s=round(now + seconds_for(epochs, train_s, fixed_s) + final_s, 1),
        train_images_per_s=round(global_batch / seconds_per_step, 1),
        final_s=round(final_s, 3),
        final_passes=round(final_passes, 4),
        warmup_epochs=warmup,
    )


def wants_larger_model(config, plan):
    """Whether the budget, planned as `plan` for the config's `model`, fits enough epochs
    (`larger_model.from_epochs`) to train its `larger_model` instead.

    A fast CPU fits many epochs in a short budget; there a larger network learns more in
    it than the small one does in more epochs (docs/speedrun.md).
    """
    from_epochs = config.larger_model.from_epochs
    if from_epochs is None or plan.epochs < from_epochs:
        return False
    larger = with_larger_model(config)
    return models.model_args(**larger.model_kwargs()) != models.model_args(**config.model_kwargs())


def final_seconds(validation_s, final_passes, writes_s):
    """The reserve for the end: `final_passes` validation passes' worth of predicting and
    the final writes, `FINAL_MARGIN` times, and the exit."""
    return FINAL_MARGIN * (validation_s * final_passes + writes_s) + EXIT_S


def final_views(config):
    """How many views of each image the run's final network predicts for every one its
    training network validated: 5 with `model.test_time_shift` (see `train.kept_model`)."""
    return 1 + len(AddMoves.MOVES) if config.model.get("test_time_shift") else 1


def replan(plan, now_s, epoch_s, epochs_done, at_least=None, at_most=math.inf, validation_s=None):
    """`plan` made again after `epochs_done` epochs, `now_s` seconds into the run.

    `epoch_s` is what an epoch took lately (training and validation); with the epoch's
    writes, that is the pace of the epochs to come. The plan stays within `at_least`
    epochs (default: one more, which the annealed rate needs after a warm-up) and `at_most`.
    `validation_s`, what the run's validation passes took, replaces the first measure of
    one, in the epochs and in the reserve for the end: a burst of noise during that single
    measure doubled the reserve of a 5-minute run (docs/results.md, 2026-12-03).
    """
    if validation_s is not None and plan.final_passes is not None:
        final_s = final_seconds(validation_s, plan.final_passes, plan.writes_s)
        plan = dataclasses.replace(
            plan, validation_s=round(validation_s, 3), final_s=round(final_s, 3)
        )
    train_s, fixed_s = epoch_s - plan.validation_s, plan.validation_s + plan.writes_s
    left_s = plan.time_budget_s - now_s - plan.writes_s - plan.final_s  # this epoch's commit
    epochs = epochs_done + epochs_within(left_s, train_s, fixed_s)
    at_least = epochs_done + 1 if at_least is None else at_least
    epochs = round(min(max(epochs, at_least), at_most), 2)
    return dataclasses.replace(
        plan,
        epochs=epochs,
        seconds_per_epoch=round(train_s + fixed_s, 2),
        expected_end_s=round(
            now_s
            + plan.writes_s
            + seconds_for(epochs - epochs_done, train_s, fixed_s)
            + plan.final_s,
            1,
        ),
        first_epochs=plan.first_epochs or plan.epochs,
        previous_epochs=plan.epochs,
        replanned_at_s=round(now_s, 2),
        replanned_after_epochs=epochs_done,
    )


class Replan(keras.callbacks.Callback):
    """Plans the budget again, and calls `record` with each new plan before the epoch's
    commit: at the end of the warm-up, and with an `lr_schedule` after every epoch to the
    end; within the anneal the rest of the schedule is stretched onto the new end
    (`AnnealLearningRate.stretch`).

    Put it before `fashion_keras.callbacks.RunState` and after `EpochTimer`, whose
    `epoch_time` it reads; `follow()` the run's callbacks so that the schedule and the stop
    move with the plan. A run killed between the record and the commit starts that epoch
    again with the new plan: its rates so far are the same whatever the horizon. It times
    the fit's validation passes too: their median is the plan's new `validation_s`.

    Args:
        plan: the `Plan` in force.
        elapsed_s: the run's clock.
        record: called with each new `Plan`.
        steps_per_epoch: batches in an epoch.
        lr_schedule: the run's `training.lr_schedule` (not `"constant"`), to re-plan after
            every epoch; None: after the warm-up only.
        most_epochs: the most epochs a re-plan may choose (the `epochs` given to `fit`).
    """

    def __init__(
        self, plan, elapsed_s, record, steps_per_epoch, lr_schedule=None, most_epochs=None
    ):
        super().__init__()
        self.plan, self.elapsed_s, self.record = plan, elapsed_s, record
        self.steps_per_epoch, self.lr_schedule = steps_per_epoch, lr_schedule
        self.most_epochs = most_epochs or math.inf
        self.epoch_times, self.validation_times, self.followers = [], [], []

    def follow(self, callbacks):
        """Moves the end of these callbacks (the schedule, the stop) with the plan."""
        self.followers = [c for c in callbacks if isinstance(c, (AnnealLearningRate, StopAtStep))]

    def on_test_begin(self, logs=None):
        self.validation_started = time.perf_counter()

    def on_test_end(self, logs=None):
        self.validation_times.append(time.perf_counter() - self.validation_started)

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_times.append(logs["epoch_time"])
        done, warmup = epoch + 1, self.plan.warmup_epochs
        stop = self.model.stop_training or done < warmup or done >= self.plan.epochs
        if stop or (done > warmup and not self.lr_schedule):
            return
        # None when the fit does not validate: the plan keeps its first measure then.
        validation_s = float(np.median(self.validation_times)) if self.validation_times else None
        annealing = done > warmup and (
            bool(self.plan.lr_stretches)
            or done * self.steps_per_epoch >= self._anneal_start(self.plan)
        )
        if done == warmup:  # the warm-up's epochs, as they ran
            pace = float(np.mean(self.epoch_times))
            new = replan(self.plan, self.elapsed_s(), pace, done, validation_s=validation_s)
        else:
            pace = float(np.mean(self.epoch_times[-3:]))  # the machine's speed of late
            at_least = self._at_least(done, annealing)
            new = replan(
                self.plan, self.elapsed_s(), pace, done, at_least, self.most_epochs, validation_s
            )
        if new.epochs != self.plan.epochs or self.plan.replanned_at_s is None:
            stretched = annealing and new.epochs != self.plan.epochs
            if stretched:
                stretch = [done, self.plan.epochs]
                new = dataclasses.replace(new, lr_stretches=[*(new.lr_stretches or []), stretch])
            self._move_end(new.epochs, done if stretched else None)
            self.record(new)
        self.plan = new

    def _at_least(self, done, annealing):
        """The fewest epochs a re-plan after `done` may choose: within the anneal, one batch
        more; before it, a horizon whose anneal has not begun yet either."""
        if annealing:
            return math.ceil(100 * (done + 1 / self.steps_per_epoch)) / 100
        warmup = self.plan.warmup_epochs
        return math.ceil(100 * (warmup + (done - warmup) / (1 - WSD_COOLDOWN)) + 1) / 100

    def _move_end(self, epochs, stretched_after=None):
        """Moves the followers' end to `epochs`; the schedule's with a stretch after
        `stretched_after` epochs, when given."""
        total = round(epochs * self.steps_per_epoch)
        for follower in self.followers:
            if stretched_after is not None and isinstance(follower, AnnealLearningRate):
                follower.stretch(stretched_after * self.steps_per_epoch, total)
            else:
                follower.total_steps = total

    def _anneal_start(self, plan):
        """The first step whose rate depends on the plan's end."""
        warmup_steps = plan.warmup_epochs * self.steps_per_epoch
        if self.lr_schedule != "wsd":
            return warmup_steps
        return wsd_anneal_start(round(plan.epochs * self.steps_per_epoch), warmup_steps)


class Deadline(keras.callbacks.Callback):
    """Stops a budgeted run after the call that leaves just enough time for the rest.

    A noisy machine can make the planned epochs take longer than measured. After each call,
    if the time left would not fit one more call, the epoch's validation and writes, and the
    test, training stops there; the epoch still validates, and before its commit
    `record` gets the plan with the epochs actually trained (to the batch) and the planned
    ones as the learning rate's horizon, so the saved config repeats the run. Put it before
    `fashion_keras.callbacks.RunState`.

    Args:
        plan: the run's `Plan`.
        elapsed_s: the run's clock.
        steps_per_epoch: batches in an epoch.
        record: called with the new `Plan` when it stops the run.
        per_call: batches in a call of the training function (`steps_per_execution`): Keras
            calls back once a call, so the next batch to fit is the next call's.
    """

    def __init__(self, plan, elapsed_s, steps_per_epoch, record, per_call=1):
        super().__init__()
        self.plan, self.elapsed_s, self.record = plan, elapsed_s, record
        self.steps_per_epoch, self.per_call = steps_per_epoch, per_call
        self.stopped_at = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        p, step = self.plan, self.epoch * self.steps_per_epoch + batch + 1
        if self.stopped_at is not None or step >= round(p.epochs * self.steps_per_epoch):
            return  # stopped already, or at the planned end, which stops the run anyway
        rest_s = self.per_call * p.seconds_per_step + p.validation_s + p.writes_s + p.final_s
        if self.elapsed_s() + rest_s > p.time_budget_s:
            self.model.stop_training = True
            self.stopped_at = (step, self.elapsed_s())

    def on_epoch_end(self, epoch, logs=None):
        if self.stopped_at is not None and self.plan.stopped_at_s is None:
            step, now_s = self.stopped_at
            self.plan = dataclasses.replace(
                self.plan,
                epochs=round(step / self.steps_per_epoch, 4),  # names the step exactly
                lr_horizon_epochs=self.plan.lr_horizon_epochs or self.plan.epochs,
                stopped_at_s=round(now_s, 2),
            )
            self.record(self.plan)


def epochs_within(seconds, train_s, fixed_s):
    """The most epochs, to a hundredth, that fit in SAFETY x `seconds`.

    An epoch trains for `train_s` and then validates and writes for `fixed_s`; a last
    epoch cut short trains for its share of `train_s` and still pays `fixed_s`.
    """
    seconds = SAFETY * seconds
    whole = max(0, math.floor(seconds / (train_s + fixed_s)))
    rest = seconds - whole * (train_s + fixed_s) - fixed_s
    return round(whole + max(0, math.floor(100 * rest / train_s)) / 100, 2)


def seconds_for(epochs, train_s, fixed_s):
    """What `epochs` (a last one cut short included) take: see `epochs_within`."""
    return epochs * train_s + math.ceil(epochs) * fixed_s


def describe(plan):
    """One line for the log: what was measured and what was decided."""
    fits = "" if plan.expected_end_s <= plan.time_budget_s else " (more than the budget allows)"
    decided = (
        f"{plan.epochs:g} epoch(s), test result expected at about {plan.expected_end_s:.0f} s{fits}"
    )
    if plan.stopped_at_s is not None:
        return (
            f"Stopped at {plan.stopped_at_s:.1f} s, after {plan.epochs:g} of the "
            f"{plan.lr_horizon_epochs:g} planned epochs: the epochs took longer than measured, "
            "and the rest must fit the budget"
        )
    if plan.replanned_at_s is not None:
        after = plan.replanned_after_epochs or plan.warmup_epochs
        what = f"epoch {after}"
        if after == plan.warmup_epochs:
            what = f"the {after} warm-up epoch(s)"
        stretched = bool(plan.lr_stretches) and plan.lr_stretches[-1][0] == after
        return (
            f"Re-planned after {what}, at {plan.replanned_at_s:.1f} s: "
            f"{plan.seconds_per_epoch:.1f} s per epoch measured -> {decided} "
            f"(planned before: {plan.previous_epochs or plan.first_epochs:g})"
            + ("; the rest of the anneal moves with it" if stretched else "")
        )
    again = f", planned again after {plan.warmup_epochs} warm-up" if plan.warmup_epochs else ""
    larger = ""
    if plan.smaller_model_epochs is not None:
        fit = f"{plan.smaller_model_epochs:g} epochs"
        larger = f" of the larger model (the configured one fit {fit})"
    return (
        f"Time budget {plan.time_budget_s:g} s: {plan.planned_at_s:.1f} s used to start and "
        f"measure; {plan.seconds_per_epoch:.1f} s per epoch ({plan.train_images_per_s:,.0f} "
        f"images/s){larger} -> {decided}{again}"
    )


def _measure(model, config, train_data, validation, global_batch, scratch_dir):
    """Seconds per training step, per validation and per epoch's writes; the model is put
    back as it was."""
    snapshot = _snapshot(model)
    seconds_per_step = _time_steps(model, *train_data, global_batch, config)
    validation_s = _time_validation(model, *validation, global_batch)
    writes_s = _time_writes(model, scratch_dir)
    _restore(snapshot)
    return seconds_per_step, validation_s, writes_s


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
    """Seconds per training batch: the mean after the first call (which traces), with the
    learning-rate callback the run sets every call with.

    Keras calls back once per call of the training function, which runs
    `training.steps_per_execution` batches; the last call, which may run fewer, is not
    timed. The warm-up ends with a batch of the epoch's last, smaller size, so the real run
    does not trace again there.
    """
    per_call = config.training.steps_per_execution
    wanted = max(WARMUP_STEPS, (TRACE_CALLS + TIMED_CALLS) * per_call)
    full = min(wanted, len(x) // global_batch)
    n = full * global_batch + len(x) % global_batch
    clock = _BatchClock()
    callbacks = [clock]
    t = config.training
    if t.lr_schedule != "constant" or t.warmup_epochs:  # its per-batch cost, not its rates
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
