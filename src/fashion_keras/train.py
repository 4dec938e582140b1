"""Training: `train(config)` runs `model.fit` and leaves a complete run directory.

The recipe, in the order of a keras-io example: set up (strategy, run directory, seed),
prepare the data, build the model (restoring the backup when resuming), plan the epochs
when training to a time budget, make the callbacks, fit, evaluate on the test set, write
the results. `fashion_keras.rundir` describes the run directory and reads it back.

Running the same command with the same `--output` after a crash resumes: a kill at any
moment loses at most the epoch in flight, and a kill after the last epoch redoes only the
evaluation and the final writes.
"""

import contextlib
import dataclasses
import math
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

import fashion_keras.layers  # noqa: F401  (registers the project's layers for load_model)
from fashion_keras import budget, distribute, ensemble, failpoints, files, machine, rundir
from fashion_keras import callbacks as cb
from fashion_keras import config as cfg
from fashion_keras.data import load_data, make_dataset, train_size
from fashion_keras.errors import interrupt_status, raise_pending_interrupt
from fashion_keras.losses import SmoothedSparseCrossentropy
from fashion_keras.machine import seconds_since_process_start
from fashion_keras.metrics import logit_scores
from fashion_keras.models import build_model, whiten_first_conv
from fashion_keras.rundir import RunError, TrainResult
from fashion_keras.uncertainty import fit_temperature


class TrainingInterrupted(Exception):
    """Training stopped on Ctrl-C or SIGTERM; the backup lets the same command resume."""

    def __init__(self, run_dir, epochs_done, exit_status=130):
        super().__init__(
            f"interrupted after {epochs_done} completed epoch(s); run the same command with "
            f"--output {run_dir} to resume"
        )
        self.run_dir = run_dir
        self.epochs_done = epochs_done
        self.exit_status = exit_status  # 130 for Ctrl-C, 143 for SIGTERM


@dataclasses.dataclass(frozen=True)
class Setup:
    """What `set_up` decided: where the run goes and how it is distributed."""

    config: cfg.Config  # as the run uses it (epochs fixed once planned)
    strategy: tf.distribute.Strategy
    run_dir: Path  # where this process writes (a private directory on non-chief workers)
    output: Path  # the run directory the user named
    chief: bool
    policy: str  # the Keras dtype policy
    global_batch: int


def stopwatch():
    """A clock for `train(clock=...)`: the seconds since this call."""
    started = time.perf_counter()
    return lambda: time.perf_counter() - started


def train(config, output=None, data_dir=None, verbose=None, clock=None):
    """Trains the configured model and writes a complete run directory.

    Args:
        config: a `Config` (see `fashion_keras.config.load_config`).
        output: the run directory; default `runs/<name>-<timestamp>/`. An unfinished run
            there is resumed; a directory that is neither empty nor a run is refused.
        data_dir: the directory holding the four Fashion-MNIST files; default: searched
            (see `fashion_keras.data`). Not part of the run's config.
        verbose: Keras' fit verbosity; default a progress bar on a terminal, one line per
            epoch otherwise.
        clock: a function returning the seconds this run has used, which
            `training.time_budget_s` counts; default the seconds since this call (the
            command line counts from process start).

    With `training.members` above 1 it trains an ensemble instead (see
    `fashion_keras.ensemble`).

    Returns:
        A `TrainResult` with the model, the per-epoch history, the metrics, the run dir and
        the evaluated network's validation and test logits.

    Raises:
        ConfigError: `config` is not a `Config`, or not a valid one (edited after
            `load_config`).
        RunError: the run directory is someone else's, finished, or being written by another
            process; the budget cannot fit one epoch; the training diverged.

    Example:
        >>> config = load_config("baseline", ["training.epochs=1"])
        >>> train(config).metrics["test_accuracy"]
    """
    if not isinstance(config, cfg.Config):
        raise cfg.ConfigError(
            "config must be a Config from load_config, e.g. load_config('baseline', "
            f"['training.epochs=3']). Received: {config!r}"
        )
    config = cfg.from_dict(config.to_dict())  # checked again, as a file is: edits by hand
    clock = clock or stopwatch()
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2
    if config.training.members > 1:
        return ensemble.train_members(train, config, output, data_dir, verbose, clock)
    setup = set_up(config, output)
    train_data, validation, test = load_data(data_dir, **dataclasses.asdict(config.data))
    steps = epoch_steps(setup, len(train_data[0]))
    with rundir.claim(setup.run_dir):  # every check above has passed: now we may write
        setup = dataclasses.replace(setup, config=open_run_dir(setup.config, setup.run_dir))
        model, first_epoch, state = build_and_restore(setup, train_data[0])
        resumed_from = first_epoch  # the warm-up below moves first_epoch on
        planned_now = setup.config.training.epochs is None  # else planned by an earlier process
        if planned_now:
            setup, model = plan_budget(setup, model, train_data, validation, len(test[0]), clock)
        if config.training.time_budget_s and warm_up_due(setup.run_dir, first_epoch):
            setup, first_epoch, state = warm_up(
                setup, model, train_data, validation, (first_epoch, state), clock, verbose
            )
        epochs = epochs_to_fit(setup.config.training.epochs, steps)
        if first_epoch < epochs and not state.get("stop_training"):
            guard, most = keep_budget(setup, clock, steps) if planned_now else ([], epochs)
            callbacks = make_callbacks(setup, steps, state, before_commit=guard)
            for callback in guard:
                if isinstance(callback, budget.Replan):
                    callback.follow(callbacks)
            fit(setup, model, train_data, validation, first_epoch, most, callbacks, verbose)
            if planned_now:
                setup = with_plan(setup, read_plan(setup.run_dir))
        with resumable(setup):
            evaluated_epoch, model = kept_model(setup, model)
            logits = {"test": evaluate(setup, model, test)}
            logits["validation"] = predict(setup, model, validation[0])
        test_loss, test_accuracy = logit_scores(logits["test"], test[1])
        return write_results(
            setup,
            model,
            {
                "test_loss": test_loss,
                "test_accuracy": test_accuracy,
                "val_accuracy": logit_scores(logits["validation"], validation[1])[1],
                "evaluated_epoch": evaluated_epoch,
                # What calibrates the evaluated network, fitted on the validation split; the
                # temperature `predict --temperature run` uses.
                "temperature": fit_temperature(logits["validation"], validation[1]),
                "resumed_from_epoch": resumed_from,
                "train_size": len(train_data[0]),
                "val_size": len(validation[0]),
                "test_size": len(test[0]),
            },
            clock,
            planned_now,
            logits,
        )


# --------------------------------------------------------------------------- set up


def resolve_precision(precision="auto"):
    """The Keras dtype policy for `training.precision`.

    `"auto"` picks `mixed_float16` on a GPU, `mixed_bfloat16` on a CPU with native bfloat16
    instructions (AVX-512 BF16 or AMX), and `float32` otherwise.
    """
    if precision != "auto":
        return precision
    if tf.config.list_physical_devices("GPU"):
        return "mixed_float16"
    return "mixed_bfloat16" if {"avx512_bf16", "amx_bf16"} & machine.cpu_flags() else "float32"


def set_up(config, output=None):
    """Creates the strategy (first: MultiWorkerMirroredStrategy must precede any other
    TensorFlow work), checks the run directory (without writing) and seeds the random
    number generators."""
    d, t = config.distribute, config.training
    strategy = distribute.make_strategy(d.strategy, d.cpu_devices)
    multi_worker = d.strategy == "multi_worker"
    if multi_worker and output is None:
        raise RunError(
            "distribute.strategy=multi_worker needs --output: every worker must name the same run"
        )
    output = output or rundir.default_output(config.run_name)
    # $TF_CONFIG says who is chief only for a multi-worker job; other workers write a
    # private copy of the run directory.
    chief = not multi_worker or distribute.is_chief()
    run_dir = Path(output) if chief else distribute.worker_dir(output)
    rundir.tidy_finished(run_dir)
    global_batch = t.batch_size * strategy.num_replicas_in_sync
    config = run_config(whole_calls(config, global_batch, strategy.num_replicas_in_sync), run_dir)
    keras.utils.set_random_seed(config.seed)
    if t.deterministic:
        tf.config.experimental.enable_op_determinism()
    setup = Setup(
        config=config,
        strategy=strategy,
        run_dir=run_dir,
        output=Path(output),
        chief=chief,
        policy=resolve_precision(t.precision),
        global_batch=global_batch,
    )
    print(
        f"Run {setup.output}: device {distribute.describe_device()}; strategy "
        f"{distribute.strategy_name(strategy)} with {strategy.num_replicas_in_sync} "
        f"replica(s); global batch {setup.global_batch}; precision {setup.policy}",
        flush=True,
    )
    return setup


def whole_calls(config, global_batch, replicas=1):
    """`config` with `training.steps_per_execution` lowered, where needed, to the most
    batches a call that divide an epoch's; over several replicas, to 1.

    Keras runs whole calls: at 4 batches a call, an epoch of 430 batches would train 432,
    every later epoch would start 2 batches further into the stream of shuffled epochs, and
    a run resumed at an epoch's start would not repeat an uninterrupted one. Over several
    replicas a call of more than one batch fails inside Keras ("You must feed a value for
    placeholder tensor"; plain Keras 3.15.1 with TensorFlow 2.21.0, MirroredStrategy).
    """
    t, d = config.training, config.data
    steps = math.ceil(train_size(d.validation_size, d.train_limit) / global_batch)
    per_call = max(n for n in range(1, min(t.steps_per_execution, steps) + 1) if steps % n == 0)
    why = f"the most batches a call that divide an epoch's {steps}"
    if replicas > 1 and per_call > 1:
        per_call, why = 1, f"Keras fails calls of several batches over {replicas} replicas"
    if per_call == t.steps_per_execution:
        return config
    if t.lookahead and per_call < 2:
        raise cfg.ConfigError(
            f"training.lookahead steps back after each call, and this run can only run 1 "
            f"batch a call ({why}); set training.lookahead=0"
        )
    print(
        f"training.steps_per_execution={per_call}, not {t.steps_per_execution}: {why}", flush=True
    )
    training = dataclasses.replace(t, steps_per_execution=per_call)
    return dataclasses.replace(config, training=training)


def run_config(config, run_dir):
    """The config the run in `run_dir` uses, checking (reading only) that it may use it.

    A run that planned its epochs for a time budget (`plan.json`) keeps them when the same
    budget is asked again, so a resumed run never re-plans; and the larger model, if its
    plan chose `larger_model`.

    Raises:
        RunError: `run_dir` is not ours (see `rundir.check_ownership`), is finished, or
            holds an unfinished run of another config.
    """
    rundir.check_ownership(run_dir)
    saved = run_dir / "config.yaml"
    plan = rundir.read_json(run_dir / "plan.json")
    asked = cfg.dump_config(config)
    if plan and config.training.time_budget_s == plan["time_budget_s"]:
        if plan.get("smaller_model_epochs") is not None:  # the plan chose the larger model
            config = cfg.with_larger_model(config)
        config = budget.with_epochs(
            config, plan["epochs"], plan.get("lr_horizon_epochs"), plan.get("lr_stretches")
        )
    allowed = {asked, cfg.dump_config(config)}
    if plan and config.training.epochs == plan["epochs"]:
        # Killed between writing plan.json and config.yaml: it has the plan before, whose
        # stretches may lack the latest.
        before = plan.get("previous_epochs", plan.get("first_epochs"))  # 0.2: first_epochs
        stretches = plan.get("lr_stretches") or []
        for epochs in (before, plan.get("lr_horizon_epochs")):
            for kept in (stretches, stretches[:-1]) if epochs else ():
                allowed.add(cfg.dump_config(budget.with_epochs(config, epochs, None, kept)))
    if saved.exists() and cfg.resolved_text(saved) not in allowed:
        raise RunError(
            f"{run_dir} holds an unfinished run with a different config or network; resume it "
            f"with its own: --config {saved} --output {run_dir}, or choose another --output"
        )
    return config


def open_run_dir(config, run_dir):
    """Checks a claimed run directory again (another process may have finished it
    meanwhile), clears what a killed run of ours left, and writes `config.yaml` once the
    epochs are known. Returns the config the run uses (see `run_config`)."""
    config = run_config(config, run_dir)
    rundir.remove_leftovers(run_dir)
    if config.training.epochs is not None:
        _write_config(run_dir, config)
    return config


def _write_config(run_dir, config):
    text = cfg.dump_config(config)
    path = run_dir / "config.yaml"
    if not path.is_file() or path.read_text() != text:
        files.write_text(path, text)


# --------------------------------------------------------------------------- the model


def compile_model(config, policy=None, final=False, optimizer=None):
    """Builds and compiles the configured model (call it inside the strategy's scope).

    The dtype policy (`training.precision`, or `policy`) applies to this model only: the
    global Keras policy is left as it was. The learning-rate schedule is a callback (see
    `make_callbacks`).

    Args:
        config: a `Config`.
        policy: a Keras dtype policy name; default `resolve_precision(training.precision)`.
        final: build the network the run evaluates and saves. It differs from the one
            trained only with `model.test_time_shift`, which the final network alone has
            (see `kept_model`).
        optimizer: default a new `keras.optimizers.Adam` at `training.learning_rate`.

    Returns:
        The compiled `keras.Model`, outputting logits.
    """
    t = config.training
    kwargs = config.model_kwargs()
    if not final:
        kwargs.pop("test_time_shift", None)
    previous = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy(policy or resolve_precision(t.precision))
    try:
        model = build_model(**kwargs)
        model.compile(
            optimizer=optimizer or keras.optimizers.Adam(learning_rate=t.learning_rate),
            loss=loss_for(t),
            metrics=metrics_for(t),
            steps_per_execution=t.steps_per_execution,
            jit_compile=t.jit_compile,
        )
    finally:
        keras.mixed_precision.set_dtype_policy(previous)
    return model


def loss_for(training):
    """The loss `training` asks for: cross-entropy of logits against class indices."""
    if training.label_smoothing:
        return SmoothedSparseCrossentropy(training.label_smoothing)
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def metrics_for(training):
    """Accuracy; with label smoothing also the plain cross-entropy, which the run reports as
    its test loss (`rundir.scores`): the compiled loss is smoothed then."""
    if not training.label_smoothing:
        return ["accuracy"]
    plain = keras.metrics.SparseCategoricalCrossentropy(from_logits=True, name=rundir.PLAIN_LOSS)
    return ["accuracy", plain]


def build_and_restore(setup, images):
    """The compiled model, and where to start: `(model, first_epoch, backup entry)`.

    When the run directory holds a backup, the model gets its weights, optimizer state and
    random state, and training continues after the backed-up epoch. A new run with
    `training.whitened_init` starts its first convolution from the training `images`.
    """
    backup_dir = setup.run_dir / "backup"
    first_epoch = max(rundir.read_backup(backup_dir), default=0)
    with setup.strategy.scope():
        model = compile_model(setup.config, policy=setup.policy)
        if isinstance(setup.strategy, tf.distribute.MultiWorkerMirroredStrategy):
            first_epoch = distribute.agree_on_epoch(setup.strategy, first_epoch)
        state = rundir.restore_backup(model, backup_dir, first_epoch) if first_epoch else {}
        if setup.config.training.whitened_init and not first_epoch:
            whiten_first_conv(model, images)
    if first_epoch:
        print(f"Resuming after epoch {first_epoch} from {backup_dir}", flush=True)
    return model, first_epoch, state


def plan_budget(setup, model, train_data, validation, test_size, clock):
    """Measures the speed, fixes the epochs that fit `training.time_budget_s`, and records
    the decision in `plan.json` and then `config.yaml`. Where the budget fits
    `larger_model.from_epochs` of the configured network, the larger network is built
    (from the same seed, as a run configured with it would be) and planned instead.

    Returns:
        `(setup, model)`: the setup with those epochs (and the network chosen), its model.

    Raises:
        RunError: not even one epoch fits (nothing is written then).
    """
    plan = _plan(setup, model, train_data, validation, test_size, clock)
    if budget.wants_larger_model(setup.config, plan):
        setup = dataclasses.replace(setup, config=cfg.with_larger_model(setup.config))
        keras.utils.set_random_seed(setup.config.seed)
        model = build_and_restore(setup, train_data[0])[0]
        larger = _plan(setup, model, train_data, validation, test_size, clock)
        plan = dataclasses.replace(larger, smaller_model_epochs=plan.epochs)
    return record_plan(setup, plan), model


def _plan(setup, model, train_data, validation, test_size, clock):
    with setup.strategy.scope():
        return budget.plan_epochs(
            model,
            setup.config,
            train_data,
            validation,
            test_size,
            global_batch=setup.global_batch,
            scratch_dir=setup.run_dir / rundir.SCRATCH,
            elapsed_s=clock,
        )


def record_plan(setup, plan):
    """Prints `plan`, writes it to `plan.json` and its epochs to `config.yaml` (in that
    order: a resumed run takes its epochs from `plan.json`); returns the setup with them."""
    print(budget.describe(plan), flush=True)
    files.write_json(setup.run_dir / "plan.json", dataclasses.asdict(plan))
    setup = with_plan(setup, plan)
    _write_config(setup.run_dir, setup.config)
    return setup


def with_plan(setup, plan):
    """`setup` with the epochs (and learning-rate horizon and stretches) of `plan`."""
    config = budget.with_epochs(
        setup.config, plan.epochs, plan.lr_horizon_epochs, plan.lr_stretches
    )
    return dataclasses.replace(setup, config=config)


def keep_budget(setup, clock, steps):
    """The callbacks that keep the budget this process planned, and the epochs to `fit`.

    The `budget.Deadline`, last; before it, with an annealed `training.lr_schedule`, a
    `budget.Replan` after every epoch, up to twice the epochs planned now
    (the `fit` runs to those, and the plan stops it). Each new plan is recorded (see
    `record_plan`) and handed to the deadline.
    """
    plan = read_plan(setup.run_dir)
    per_call = setup.config.training.steps_per_execution
    deadline = budget.Deadline(plan, clock, steps, lambda new: record_plan(setup, new), per_call)
    epochs = epochs_to_fit(plan.epochs, steps)
    lr_schedule = setup.config.training.lr_schedule
    if lr_schedule == "constant":
        return [deadline], epochs

    def record(new):
        deadline.plan = new
        record_plan(setup, new)

    most = 2 * epochs
    replan = budget.Replan(plan, clock, record, steps, lr_schedule, most_epochs=most)
    return [replan, deadline], most


def read_plan(run_dir):
    """The budget's `Plan` as `plan.json` in `run_dir` has it."""
    return budget.Plan(**rundir.read_json(run_dir / "plan.json"))


def warm_up_due(run_dir, first_epoch):
    """Whether the budgeted run in `run_dir` has warm-up epochs to train before it re-plans."""
    plan = rundir.read_json(run_dir / "plan.json") or {}
    return plan.get("replanned_at_s") is None and first_epoch < plan.get("warmup_epochs", 0)


def warm_up(setup, model, train_data, validation, start, clock, verbose):
    """Trains a budgeted run's warm-up epochs and plans the rest from their measured time.

    `start` is `(first_epoch, state)` as `build_and_restore` returned them: a run resumed
    before its warm-up ended plans again at the warm-up's end on its own clock (the killed
    process's time is not known). Returns `(setup, first_epoch, state)` for the fit that
    follows: the setup with the re-planned epochs, and the epoch and backup entry the
    warm-up committed last (the run continues from them as a resumed run would).
    """
    replanned = {}
    plan = read_plan(setup.run_dir)
    steps = epoch_steps(setup, len(train_data[0]))
    replan = budget.Replan(
        plan, clock, lambda new: replanned.update(setup=record_plan(setup, new)), steps
    )
    callbacks = make_callbacks(setup, steps, start[1], before_commit=[replan])
    # Fit toward the first plan's end (so the log counts its epochs), stopping once the
    # warm-up is committed: after `RunState`, which must not record the stop.
    stop = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: setattr(
            model, "stop_training", epoch + 1 >= plan.warmup_epochs
        )
    )
    epochs = epochs_to_fit(plan.epochs, steps)
    fit(setup, model, train_data, validation, start[0], epochs, [*callbacks, stop], verbose)
    entries = rundir.read_backup(setup.run_dir / "backup")
    return replanned.get("setup", setup), max(entries), entries[max(entries)]


# --------------------------------------------------------------------------- callbacks


def make_callbacks(setup, steps, state, before_commit=()):
    """The run's callbacks; those with resumable state take it back from the backup.
    `before_commit`: callbacks to run after the others and before an epoch's commit."""
    run_dir, t = setup.run_dir, setup.config.training
    pieces = {"best_checkpoint": cb.BestCheckpoint(run_dir / "best.keras", run_dir / "backup")}
    if t.early_stopping_patience:
        pieces["early_stopping"] = cb.EarlyStopping(
            monitor="val_loss", patience=t.early_stopping_patience
        )
    for name, piece in pieces.items():
        piece.set_state(state.get("pieces", {}).get(name))
    total, horizon = (round(e * steps) for e in (t.epochs, t.lr_horizon_epochs or t.epochs))
    schedule = []
    if t.lr_schedule != "constant" or t.warmup_epochs:
        stretches = [(round(d * steps), round(p * steps)) for d, p in t.lr_stretches or []]
        schedule = [
            cb.AnnealLearningRate(
                t.learning_rate, horizon, steps, t.lr_schedule, t.warmup_epochs * steps, stretches
            )
        ]
    if total % steps or t.lr_schedule != "constant":  # a fraction of an epoch; a moving end
        schedule.append(cb.StopAtStep(total, steps))
    if t.lookahead:
        schedule.append(cb.Lookahead(t.lookahead))
    return [
        cb.RaisePendingInterrupt(),
        keras.callbacks.TerminateOnNaN(),  # a diverged run stops; evaluate() says so
        *schedule,
        cb.EpochTimer(),
        cb.HistoryCSV(run_dir / "history.csv"),
        cb.TensorBoard(log_dir=str(run_dir / "logs")),
        *pieces.values(),
        *before_commit,
        # Last: an epoch counts as done once everything above has run for it.
        cb.RunState(run_dir / "backup", pieces),
    ]


# --------------------------------------------------------------------------- fit


def epoch_steps(setup, train_size):
    """Batches in an epoch of `train_size` images at the run's global batch."""
    return math.ceil(train_size / setup.global_batch)


def epochs_to_fit(epochs, steps):
    """`training.epochs` as `fit` counts them: a last epoch cut short is one more."""
    return math.ceil(round(epochs * steps) / steps)


def trained_epochs(training, steps):
    """The epochs `fit` trains for a `TrainingConfig`: Keras stops with the call (of
    `steps_per_execution` batches, which divide an epoch's `steps`) that holds the last."""
    per_call, last = training.steps_per_execution, round(training.epochs * steps)
    batches = math.ceil(last / per_call) * per_call
    if batches == training.epochs * steps:
        return training.epochs
    return round(batches / steps, 4)  # 71.01 epochs of 24 batches end at batch 1,704: 71.0


def fit(setup, model, train_data, validation, first_epoch, epochs, callbacks, verbose):
    """`model.fit` from `first_epoch` up to `epochs`."""
    steps = epoch_steps(setup, len(train_data[0]))
    dataset = make_dataset(*train_data, setup.global_batch, setup.config.seed, first_epoch, epochs)
    if isinstance(setup.strategy, tf.distribute.MultiWorkerMirroredStrategy):
        distribute.work_around_keras_20585(model)
    with setup.strategy.scope(), resumable(setup):
        model.fit(
            dataset,
            initial_epoch=first_epoch,
            epochs=epochs,
            steps_per_epoch=steps,
            validation_data=validation,
            validation_batch_size=setup.global_batch,  # Keras' default, 32, is slower
            shuffle=False,  # make_dataset shuffles, reproducibly
            callbacks=callbacks,
            verbose=verbose,
        )


@contextlib.contextmanager
def resumable(setup):
    """Turns a Ctrl-C or SIGTERM in the block into `TrainingInterrupted`, which says how to
    resume; also one whose exception Python swallowed (see `errors.on_signal`), so that
    the run stops before it writes its results."""
    try:
        yield
        raise_pending_interrupt()
    except KeyboardInterrupt as e:
        epochs_done = max(rundir.read_backup(setup.run_dir / "backup"), default=0)
        raise TrainingInterrupted(setup.output, epochs_done, interrupt_status(e)) from None


# --------------------------------------------------------------------------- evaluate, write


def kept_model(setup, model):
    """The epoch the run keeps and its network: `(epoch, model)`.

    With early stopping that is the best epoch (from `best.keras`), else the last one. With
    `model.test_time_shift` the weights move into a network that also averages each image's
    moves: validating every epoch with them would make an epoch of `fast_shifted` about 28 %
    longer (its validation pass took 0.35 of 4.95 s), so only this final network has them.
    Raises RunError if the training loss became NaN or infinite.
    """
    history = rundir.read_history(setup.run_dir / "history.csv")
    for row in history:
        if not math.isfinite(row["loss"]):
            raise RunError(
                f"training diverged: the loss became {row['loss']} in epoch {row['epoch']}; "
                "train into a new directory with a lower training.learning_rate (it was "
                f"{setup.config.training.learning_rate:g})"
            )
    epoch = history[-1]["epoch"]
    with setup.strategy.scope():
        if setup.config.training.early_stopping_patience:
            model.load_weights(setup.run_dir / "best.keras")
            epoch = min(history, key=lambda row: row["val_loss"])["epoch"]
        if setup.config.model.get("test_time_shift"):
            # The trained optimizer too: model.keras holds its state, as without the moves.
            final = compile_model(setup.config, setup.policy, final=True, optimizer=model.optimizer)
            final.set_weights(model.get_weights())  # the moves add no weights
            model = final
    return epoch, model


def predict(setup, model, x):
    """`model`'s logits for `x`, as float64 (see `distribute.predict_logits`)."""
    logits = distribute.predict_logits(setup.strategy, model, x, setup.global_batch)
    return np.asarray(logits, dtype="float64")


def evaluate(setup, model, test):
    """The test logits of `model`: the one time a run looks at the test set."""
    logits = predict(setup, model, test[0])
    failpoints.reached("evaluated")
    return logits


def write_results(setup, model, results, clock, planned_now, logits):
    """Writes `model.keras` and then `metrics.json` (which marks the run complete), removes
    the backup, and returns the `TrainResult`. `planned_now`: this process planned the
    budget (so `clock` counts the whole run)."""
    run_dir, t = setup.run_dir, setup.config.training
    plan = rundir.read_json(run_dir / "plan.json")
    wall_time_s = round(clock(), 2)
    history = pd.DataFrame(rundir.read_history(run_dir / "history.csv"))
    best = history.loc[history["val_loss"].idxmin()]
    train_time = history["epoch_time"].sum()
    steps = epoch_steps(setup, results["train_size"])
    stopped_early = len(history) < epochs_to_fit(t.epochs, steps)
    # A last one cut short: a fraction, to the end of the call that held its last batch.
    epochs = len(history) if stopped_early else trained_epochs(t, steps)
    metrics = {
        **results,
        "wall_time_s": wall_time_s,
        **budget.record(plan and plan["time_budget_s"], planned_now, wall_time_s),
        "best_epoch": int(best["epoch"]),
        "best_val_loss": float(best["val_loss"]),
        "epochs": epochs,
        "stopped_early": stopped_early,
        "process_wall_time_s": seconds_since_process_start(),
        "fit_time_s": round(float(train_time), 2),
        "seconds_per_epoch": round(float(np.median(history["epoch_time"])), 2),
        "train_images_per_s": round(results["train_size"] * epochs / train_time, 1),
        "global_batch_size": setup.global_batch,
        "precision": setup.policy,
        "device": distribute.describe_device(),
        "strategy": distribute.strategy_name(setup.strategy),
        "replicas": setup.strategy.num_replicas_in_sync,
        "backend": keras.backend.backend(),
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "plan": plan,
    }
    files.save_model(model, run_dir / "model.keras")
    files.write_json(run_dir / "metrics.json", metrics)  # marks the run complete
    files.remove(run_dir / "backup")  # only now: nothing left to resume
    if not setup.chief:
        files.remove(run_dir)
    print(
        f"Test accuracy {metrics['test_accuracy']:.4f}, test loss {metrics['test_loss']:.4f} "
        f"(epoch {metrics['evaluated_epoch']}); best validation loss "
        f"{metrics['best_val_loss']:.4f} at epoch {metrics['best_epoch']}; {setup.output}",
        flush=True,
    )
    return TrainResult(model, history, metrics, setup.output, logits)
