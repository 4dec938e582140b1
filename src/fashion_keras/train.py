"""Training: `train(config)` runs `model.fit` and leaves a complete run directory.

A run directory holds `config.yaml` (written first), `history.csv` and `best.keras`
(updated every epoch), `logs/` (TensorBoard), `backup/` (while the run is unfinished),
and at the end `model.keras` and `metrics.json` (written last: its presence means the
run is complete). Running the same command with the same `--output` after a crash
resumes from the last completed epoch.
"""

import dataclasses
import math
import os
import shutil
import sys
import time
from datetime import datetime
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

import fashion_keras.layers  # noqa: F401  (registers the project's layers for load_model)
from fashion_keras import callbacks as cb
from fashion_keras import config as cfg
from fashion_keras import distribute, files
from fashion_keras.data import FILES, load_data
from fashion_keras.models import build_model

TRAIN_FILE_SIZE = FILES["train_images"].dims[0]


class RunError(ValueError):
    """The run directory cannot be used as asked."""


class TrainingInterrupted(Exception):
    """Training stopped on Ctrl-C; the backup lets the same command resume."""

    def __init__(self, run_dir, epochs_done):
        super().__init__(
            f"interrupted after {epochs_done} completed epoch(s); run the same command with "
            f"--output {run_dir} to resume"
        )
        self.run_dir = run_dir
        self.epochs_done = epochs_done


@dataclasses.dataclass
class TrainResult:
    model: keras.Model
    history: pd.DataFrame  # one row per epoch, as in history.csv
    metrics: dict  # as in metrics.json
    run_dir: Path


def seconds_since_process_start():
    """Wall seconds since this Python process started, imports included; None off Linux."""
    try:
        stat = Path("/proc/self/stat").read_text()
        now = time.clock_gettime(time.CLOCK_BOOTTIME)  # the clock `starttime` counts on
    except (OSError, AttributeError):
        return None
    start_ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, `starttime`
    age = now - start_ticks / os.sysconf("SC_CLK_TCK")
    return round(age, 2) if age >= 0 else None


def resolve_precision(precision="auto"):
    """The Keras dtype policy for `training.precision`.

    `"auto"` picks `mixed_float16` on a GPU, `mixed_bfloat16` on a CPU with native bfloat16
    instructions (AVX-512 BF16 or AMX), and `float32` otherwise.
    """
    if precision != "auto":
        return precision
    if tf.config.list_physical_devices("GPU"):
        return "mixed_float16"
    flags = distribute.cpu_info("flags").split()
    return "mixed_bfloat16" if {"avx512_bf16", "amx_bf16"} & set(flags) else "float32"


def compile_model(config, steps_per_epoch=None):
    """Builds and compiles the configured model (call it inside the strategy's scope).

    `steps_per_epoch` is needed for `training.lr_schedule: cosine`.
    """
    t = config.training
    keras.mixed_precision.set_dtype_policy(resolve_precision(t.precision))
    model = build_model(**config.model_kwargs())
    learning_rate = t.learning_rate
    if t.lr_schedule == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(
            t.learning_rate, decay_steps=t.epochs * steps_per_epoch
        )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        steps_per_execution=t.steps_per_execution,
        jit_compile=t.jit_compile,
    )
    return model


def make_dataset(x, y, batch_size, seed, first_epoch, epochs):
    """Training batches for epochs `first_epoch..epochs-1`, as one stream.

    Each epoch's order is a stateless shuffle seeded by `(seed, epoch)`, so a run resumed
    at epoch k sees exactly the batches an uninterrupted run would.
    """
    n = len(x)
    x, y = tf.constant(x), tf.constant(y)

    def epoch_indices(epoch):
        order = tf.random.experimental.stateless_shuffle(tf.range(n), seed=tf.stack([seed, epoch]))
        return tf.data.Dataset.from_tensor_slices(order).batch(batch_size)

    # Fixed parallelism, no autotuning: the autotuner's thread made deleting the iterator at
    # the end of fit() block for 4-9 s in 9 of 16 timed runs here (in none of 9 without it).
    options = tf.data.Options()
    options.autotune.enabled = False
    return (
        tf.data.Dataset.range(first_epoch, epochs)
        .flat_map(epoch_indices)
        .map(lambda idx: (tf.gather(x, idx), tf.gather(y, idx)), num_parallel_calls=2)
        .prefetch(2)
        .with_options(options)
    )


def _resolved_text(path):
    """A saved `config.yaml` as `dump_config` writes it today (None if it no longer loads).

    Files written before the model section was spelled out resolve with today's variants.
    """
    try:
        return cfg.dump_config(cfg.load_config(path))
    except cfg.ConfigError:
        return None


def prepare_run_dir(config, output=None):
    """Creates (or reopens, to resume) the run directory and writes `config.yaml`."""
    if output is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        output = Path("runs") / f"{config.run_name}-{stamp}"
    run_dir = Path(output)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"--output {run_dir} is a file, not a directory")
    if (run_dir / "metrics.json").exists():
        raise RunError(
            f"{run_dir} already holds a finished run (metrics.json); choose another --output"
        )
    text = cfg.dump_config(config)
    saved = run_dir / "config.yaml"
    if saved.exists() and _resolved_text(saved) != text:
        raise RunError(
            f"{run_dir} holds an unfinished run with a different config or network; resume it "
            f"with its own: --config {saved} --output {run_dir}, or choose another --output"
        )
    for stale in run_dir.rglob(".*.part*"):  # temporaries of a killed run; never complete
        stale.unlink()
    try:
        files.check_writable(run_dir)
        files.write_text(saved, text)
    except OSError as e:
        raise RunError(f"cannot write to {run_dir}: {e.strerror or e}") from None
    return run_dir


def make_callbacks(run_dir, first_epoch, early_stopping_patience=None):
    """The run's callbacks; `first_epoch` > 0 when resuming from a backup."""
    earlier = [
        r["val_loss"] for r in cb.read_history(run_dir / "history.csv") if r["epoch"] <= first_epoch
    ]
    best_before = min(earlier) if earlier else None
    stopping = []
    if early_stopping_patience:
        # A resumed run must beat its best epoch so far to reset the patience count.
        # The best weights come from best.keras after fit, so they survive a resume too.
        stopping = [
            keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=early_stopping_patience, baseline=best_before
            )
        ]
    return [
        cb.EpochTimer(),
        cb.HistoryCSV(run_dir / "history.csv"),
        cb.TensorBoard(log_dir=str(run_dir / "logs")),
        cb.AtomicModelCheckpoint(
            str(run_dir / "best.keras"),
            monitor="val_loss",
            save_best_only=True,
            # A resumed run must beat the best epoch before the interruption.
            initial_value_threshold=best_before,
        ),
        *stopping,
        # Last: an epoch counts as done once everything above has run for it.
        cb.ResumableBackup(str(run_dir / "backup"), resume_epoch=first_epoch),
    ]


def train(config, output=None, verbose=None):
    """Trains the configured model and writes a complete run directory.

    Args:
        config: a `Config` (see `fashion_keras.config.load_config`).
        output: the run directory; default `runs/<name>-<timestamp>/`. An unfinished run
            there is resumed.
        verbose: Keras' fit verbosity; default a progress bar on a terminal, one line per
            epoch otherwise.

    Returns:
        A `TrainResult` with the model, the per-epoch history, the metrics and the run dir.

    Example:
        >>> config = load_config("configs/baseline.yaml", ["training.epochs=1"])
        >>> train(config).metrics["test_accuracy"]
    """
    started = time.perf_counter()
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2
    t = config.training
    # First: MultiWorkerMirroredStrategy must exist before any other TensorFlow work.
    strategy = distribute.make_strategy(config.distribute.strategy, config.distribute.cpu_devices)
    chief = distribute.is_chief()
    if config.distribute.strategy == "multi_worker" and output is None:
        raise RunError(
            "distribute.strategy=multi_worker needs --output: every worker must name the same run"
        )
    # Only the chief writes the run directory; other workers write a private copy.
    run_dir = prepare_run_dir(config, output if chief else distribute.worker_dir(output))
    keras.utils.set_random_seed(config.seed)
    if t.deterministic:
        tf.config.experimental.enable_op_determinism()
    replicas = strategy.num_replicas_in_sync
    global_batch = t.batch_size * replicas
    device = distribute.describe_device()

    with strategy.scope():
        train_size = config.data.train_limit or TRAIN_FILE_SIZE - config.data.validation_size
        steps = math.ceil(train_size / global_batch)
        model = compile_model(config, steps_per_epoch=steps)
    print(
        f"Run {run_dir}: device {device}; strategy {distribute.strategy_name(strategy)} "
        f"with {replicas} replica(s); global batch {global_batch}; precision "
        f"{keras.mixed_precision.dtype_policy().name}",
        flush=True,
    )

    start = time.perf_counter()
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = load_data(
        **dataclasses.asdict(config.data)
    )
    load_time = time.perf_counter() - start

    backup_dir = run_dir / "backup"
    first_epoch = cb.ResumableBackup.saved_epoch(backup_dir)
    multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    if multi_worker:
        first_epoch = distribute.agree_on_epoch(strategy, first_epoch)
    if first_epoch:
        print(f"Resuming after epoch {first_epoch} from {backup_dir}", flush=True)
    callbacks = make_callbacks(run_dir, first_epoch, t.early_stopping_patience)
    dataset = make_dataset(x_train, y_train, global_batch, config.seed, first_epoch, t.epochs)
    if multi_worker:
        # keras-team/keras#20585: fit()'s symbolic build reduces a data batch across
        # workers eagerly and fails. Without a strategy of its own the model builds while
        # tracing, and fit() still runs in the strategy's scope (see distribute.py).
        model._distribute_strategy = None
    fit_start = time.perf_counter()
    with strategy.scope():
        try:
            model.fit(
                dataset,
                epochs=t.epochs,
                steps_per_epoch=steps,
                validation_data=(x_val, y_val),
                validation_batch_size=global_batch,  # Keras' default, 32, is slower
                shuffle=False,  # make_dataset shuffles, reproducibly
                callbacks=callbacks,
                verbose=verbose,
            )
        except KeyboardInterrupt:
            epochs_done = cb.ResumableBackup.saved_epoch(backup_dir)
            raise TrainingInterrupted(run_dir, epochs_done) from None
        fit_time = time.perf_counter() - fit_start
        if t.early_stopping_patience:
            model.load_weights(run_dir / "best.keras")  # the best epoch, as promised
        test_loss, test_accuracy = model.evaluate(
            x_test, y_test, batch_size=global_batch, verbose=0
        )
    history = pd.DataFrame(cb.read_history(run_dir / "history.csv"))
    best = history.loc[history["val_loss"].idxmin()]
    epochs_run = len(history) - first_epoch
    metrics = {
        "test_loss": float(test_loss),
        "test_accuracy": float(test_accuracy),
        "best_epoch": int(best["epoch"]),
        "best_val_loss": float(best["val_loss"]),
        "epochs": len(history),  # fewer than configured if stopped early
        "stopped_early": len(history) < t.epochs,
        "resumed_from_epoch": int(first_epoch),
        "wall_time_s": round(time.perf_counter() - started, 2),
        "process_wall_time_s": seconds_since_process_start(),
        "fit_time_s": round(fit_time, 2),
        "seconds_per_epoch": round(float(np.median(history["epoch_time"].tail(epochs_run))), 2),
        "train_images_per_s": round(len(x_train) * epochs_run / fit_time, 1),
        "data_load_s": round(load_time, 3),
        "train_size": len(x_train),
        "val_size": len(x_val),
        "test_size": len(x_test),
        "global_batch_size": global_batch,
        "precision": keras.mixed_precision.dtype_policy().name,
        "device": device,
        "strategy": distribute.strategy_name(strategy),
        "replicas": replicas,
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
    }
    files.save_model(model, run_dir / "model.keras")
    files.write_json(run_dir / "metrics.json", metrics)  # last: marks the run complete
    if not chief:
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir = Path(output)
    print(
        f"Test accuracy {test_accuracy:.4f}, test loss {test_loss:.4f}; best epoch "
        f"{metrics['best_epoch']} (val loss {metrics['best_val_loss']:.4f}); {run_dir}",
        flush=True,
    )
    return TrainResult(model=model, history=history, metrics=metrics, run_dir=run_dir)


def load_run_model(run_dir, data_dir=None, checkpoint="model.keras"):
    """A finished run's saved model (Keras safe mode) and its test set.

    Returns:
        `(model, x_test, y_test)`, the test set limited as the run's config says.
    """
    run_dir = Path(run_dir)
    path = run_dir / checkpoint
    if not path.is_file():
        raise RunError(f"{path} not found; is {run_dir} a finished run directory?")
    config = cfg.load_config(run_dir / "config.yaml")
    data = dataclasses.asdict(config.data)
    data["data_dir"] = data_dir or data["data_dir"]
    _, _, (x_test, y_test) = load_data(**data)
    return keras.saving.load_model(path, safe_mode=True), x_test, y_test


def evaluate_run(run_dir, data_dir=None, checkpoint="model.keras"):
    """Evaluates a run's saved model on its test set.

    Returns:
        `{"test_loss": ..., "test_accuracy": ...}`.
    """
    model, x_test, y_test = load_run_model(run_dir, data_dir, checkpoint)
    loss, accuracy = model.evaluate(x_test, y_test, batch_size=256, verbose=0)
    return {"test_loss": float(loss), "test_accuracy": float(accuracy)}
