"""Devices and `tf.distribute` strategies: one device, mirrored replicas, or several workers.

The global batch is `training.batch_size` per replica times the replicas in sync; the
learning rate is used as configured (no automatic scaling).
"""

import hashlib
import json
import os
import stat
import tempfile
from pathlib import Path

import keras
import tensorflow as tf

from fashion_keras import machine
from fashion_keras.errors import UserError


class DistributeError(UserError):
    """The strategy asked for cannot be set up here."""


def _split_cpu(cpu_devices):
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_devices
        )
    except RuntimeError:  # devices already initialised: fine if they already match
        if len(tf.config.list_logical_devices("CPU")) != cpu_devices:
            raise DistributeError(
                "distribute.cpu_devices must be set before TensorFlow starts; run it in a "
                "fresh process"
            ) from None


def work_around_keras_20585(model):
    """Lets `model.fit` run under MultiWorkerMirroredStrategy (keras-team/keras#20585).

    The one place this project touches private Keras names; apply it only to a model
    trained with `distribute.strategy=multi_worker`. Seen in Keras 3.3 to 3.15 (TensorFlow
    backend), where `fit` fails in two places under that strategy:

    1. It reduces per-replica *scalar* logs with `strategy.reduce("MEAN", v, axis=0)`.
       Reducing them as for a one-worker strategy keeps the logs as the metrics report them;
       metric variables are still synchronised across workers and gradients are all-reduced
       by the optimizer, so training is the same data-parallel computation.
    2. Its symbolic build, for a model created in the strategy's scope, reduces a batch of
       data across workers eagerly and fails. Without a strategy of its own the model builds
       while tracing, and `fit` still runs in the strategy's scope.

    Raises:
        DistributeError: this Keras no longer has the names the workaround needs.
    """
    try:
        from keras.src.backend.tensorflow import trainer
    except ImportError:
        trainer = None
    if not hasattr(trainer, "_collective_all_reduce_multi_worker") or not hasattr(
        model, "_distribute_strategy"
    ):
        raise DistributeError(
            f"distribute.strategy=multi_worker needs a workaround for keras-team/keras#20585 "
            f"that Keras {keras.__version__} no longer allows (its private names are gone); "
            "check whether the bug is fixed there, or use Keras 3.15"
        )
    trainer._collective_all_reduce_multi_worker = lambda strategy: False
    model._distribute_strategy = None


def make_strategy(strategy="auto", cpu_devices=None):
    """Returns the `tf.distribute.Strategy` asked for.

    Args:
        strategy: `"auto"` (MirroredStrategy when several GPUs are visible, else the default
            one-device strategy), `"single"`, `"mirrored"`, or `"multi_worker"`
            (MultiWorkerMirroredStrategy from `$TF_CONFIG`; every worker runs the same
            command).
        cpu_devices: with `"mirrored"`, split the CPU into this many logical devices and
            mirror over them (how multi-device training is tested without GPUs).
    """
    import keras

    backend = keras.backend.backend()
    if backend != "tensorflow" and strategy in ("mirrored", "multi_worker"):
        raise DistributeError(
            f"distribute.strategy={strategy} is tf.distribute, which needs the TensorFlow "
            f"backend (KERAS_BACKEND={backend} now); on JAX and PyTorch train on one device "
            "(distribute.strategy=auto)"
        )
    if strategy == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise DistributeError(
                "distribute.strategy=multi_worker needs TF_CONFIG describing the cluster and "
                "this worker's task (see README, 'Running on several GPUs or machines')"
            )
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.AUTO
        )
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    if strategy == "mirrored" and cpu_devices:
        _split_cpu(cpu_devices)
        return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(cpu_devices)])
    gpus = tf.config.list_physical_devices("GPU")
    if strategy == "mirrored" or (strategy == "auto" and len(gpus) > 1):
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def predict_logits(strategy, model, x, batch_size):
    """`model`'s outputs for all of `x` (as numpy), predicted under `strategy`.

    Under MultiWorkerMirroredStrategy every worker predicts every image: `predict` would
    give each worker its shard only.
    """
    import numpy as np

    starts = range(0, len(x), batch_size)
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return np.concatenate([model(x[i : i + batch_size], training=False) for i in starts])
    if strategy.num_replicas_in_sync == 1:
        # A batch a call: at several (training.steps_per_execution), predict() traces its
        # unrolled function again for the last, shorter call, 0.7 s at 10 a call that the
        # budget's reserve for the end did not hold (docs/results.md, 2026-12-04).
        return np.concatenate([model.predict_on_batch(x[i : i + batch_size]) for i in starts])
    with strategy.scope():
        return model.predict(x, batch_size=batch_size, verbose=0)


def agree_on_epoch(strategy, epoch):
    """The fewest epochs any worker has backed up: where the whole job can resume.

    Workers run in lockstep, so their backups differ by at most one epoch (and each keeps
    the last two).
    """
    value = strategy.run(lambda: tf.constant([epoch], tf.int64))
    return int(tf.reduce_min(strategy.gather(value, axis=0)))


def task():
    """`(task_type, task_id)` of this process from `$TF_CONFIG`, or `(None, None)`."""
    spec = json.loads(os.environ.get("TF_CONFIG") or "{}").get("task", {})
    return spec.get("type"), spec.get("index")


def is_chief():
    """True unless `$TF_CONFIG` makes this process a non-chief worker.

    The chief is the `chief` task, or worker 0 when the cluster has no chief.
    """
    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    kind, index = task()
    if kind is None or kind == "chief":
        return True
    return kind == "worker" and index == 0 and "chief" not in config.get("cluster", {})


def _not_private(info, uid):
    """What makes a folder (its `os.lstat`) unfit to be private to `uid`, or None."""
    if stat.S_ISLNK(info.st_mode):
        return "is a symbolic link"
    if not stat.S_ISDIR(info.st_mode):
        return "is not a directory"
    if info.st_uid != uid:
        return f"belongs to user {info.st_uid}, not to you ({uid})"
    if info.st_mode & 0o077:
        return f"has mode {stat.S_IMODE(info.st_mode):o}, open to other users"
    return None


def private_dir():
    """This user's own folder for the workers' stand-ins, created with mode 0700.

    `fashion-keras-UID` in the temporary directory (`tempfile.gettempdir()`, `$TMPDIR`).
    The same path in every run, so a restarted worker finds its backup (not
    `$XDG_RUNTIME_DIR`, which systemd empties when the user's last session ends); private,
    so no other user can plant or read it.

    Raises:
        DistributeError: the folder is a symbolic link, is not a directory, belongs to
            another user, or lets the group or others in.
    """
    uid = os.getuid()
    path = Path(tempfile.gettempdir()) / f"fashion-keras-{uid}"
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass  # checked below, whoever made it
    except OSError as e:
        raise DistributeError(f"cannot create the worker folder {path}: {e.strerror}") from None
    problem = _not_private(os.lstat(path), uid)
    if problem:
        raise DistributeError(
            f"the worker folder {path} {problem}; a non-chief worker keeps its backup there "
            "only when it is your own directory with mode 700. Remove it (or set "
            "TMPDIR to a private directory) and restart the worker"
        )
    return path


def worker_dir(run_dir):
    """A non-chief worker's private stand-in for the run directory, stable across restarts
    (so a restarted worker finds its backup) and outside the chief's run directory: a
    folder inside `private_dir()`, named after the run directory and the task."""
    kind, index = task()
    key = hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:12]
    return private_dir() / f"{key}-{kind}{index}"


def strategy_name(strategy):
    """The strategy's public name; TensorFlow's default strategy is "default (one device)"."""
    for name in ("MultiWorkerMirroredStrategy", "MirroredStrategy", "OneDeviceStrategy"):
        if isinstance(strategy, getattr(tf.distribute, name)):
            return name
    return "default (one device)"


def describe_device():
    """ "N GPU: names" or "CPU: model (ISA flags), N cores", for logs and metrics.json."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        names = [
            tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus
        ]
        return f"{len(gpus)} GPU: {', '.join(names)}"
    return f"CPU: {machine.describe_cpu()}"
