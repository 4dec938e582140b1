"""Ensembles trained to one budget: `training.members` networks, one after another, scored
as one.

A run with `training.members: 2` holds its `config.yaml` (as asked), `member-1/` and
`member-2/`, each an ordinary run directory (see `fashion_keras.rundir`) trained with seeds
`seed` and `seed + 1000`, and at the end `model.keras`, one network that outputs the log of
the members' mean softmax (`layers.LogMeanSoftmax`), and `metrics.json` (written last: the
ensemble is complete). `fashion-keras evaluate`, `predict` and `export` take its
`model.keras` as any run's; `report` takes each member.

With `training.time_budget_s`, each member gets an equal share of what is left of the
budget when it starts, less `config.END_RESERVE_S` for the ensemble's own end, and plans its
epochs within it as any budgeted run does. The ensemble's scores come from the logits each
member computed at its own end, so no image is predicted twice.

Resuming: a rerun keeps the finished members (their saved networks predict validation and
test again), resumes the member in flight as any run resumes, then trains the rest.
"""

import dataclasses
from pathlib import Path

import keras
import numpy as np
import pandas as pd
from scipy.special import logsumexp

from fashion_keras import budget, distribute, files, rundir
from fashion_keras import config as cfg
from fashion_keras.data import load_data
from fashion_keras.layers import LogMeanSoftmax
from fashion_keras.machine import seconds_since_process_start
from fashion_keras.metrics import log_softmax, logit_scores
from fashion_keras.models import load_model
from fashion_keras.rundir import RunError, TrainResult
from fashion_keras.uncertainty import fit_temperature

# Member k trains with seed + 1000 * k: the ensembles of neighbouring seeds (42, 43, ...)
# share no member, so that their spread over seeds is that of independent runs.
SEED_STEP = 1000


def train_members(train, config, output, data_dir, verbose, clock):
    """Trains the ensemble `config` asks for; `train(config, output, data_dir, verbose,
    clock)` trains one member. Arguments and result as `fashion_keras.train.train`'s."""
    output = Path(output or rundir.default_output(config.run_name))
    check_run_dir(output, config)
    data = load_data(data_dir, **dataclasses.asdict(config.data))
    with rundir.claim(output):
        check_run_dir(output, config)  # another process may have finished it meanwhile
        rundir.remove_leftovers(output)
        if not (output / "config.yaml").is_file():
            member_budget(config, member_dir(output, 0), 0, clock())  # refused before a write
            files.write_text(output / "config.yaml", cfg.dump_config(config))
        members, planned_now = [], True
        for k in range(config.training.members):
            member = finished_member(config, output, k, data)
            if member is None:
                member = train_member(train, config, output, k, (data_dir, verbose), clock)
            # The budget counts this process's time only if it planned every member.
            planned_now = planned_now and member.metrics.get("budget_kept") is not None
            members.append(member)
        return write_results(config, output, members, data, (clock, planned_now))


def check_run_dir(output, config):
    """Raises `RunError` unless `output` may hold this ensemble: new, empty, or an unfinished
    run of the same config (see `rundir.check_ownership`). Reads only."""
    rundir.check_ownership(output)
    saved = output / "config.yaml"
    if saved.is_file() and cfg.resolved_text(saved) != cfg.dump_config(config):
        raise RunError(
            f"{output} holds an unfinished run with a different config; resume it with its "
            f"own: --config {saved} --output {output}, or choose another --output"
        )


def member_dir(output, k):
    """The run directory of member `k` (0-based) of the ensemble in `output`."""
    return Path(output) / f"member-{k + 1}"


def member_config(config, k, time_budget_s):
    """Member `k`'s config: one network, its own seed, and its share of the budget."""
    training = dataclasses.replace(config.training, members=1, time_budget_s=time_budget_s)
    return dataclasses.replace(config, seed=config.seed + SEED_STEP * k, training=training)


def member_budget(config, run_dir, k, started_s):
    """Member `k`'s time budget, in seconds (None without one): what a resumed member
    planned with, else an equal share of what is left at `started_s`, less the reserve."""
    t = config.training
    if t.time_budget_s is None:
        return None
    plan = rundir.read_json(run_dir / "plan.json")
    if plan:
        return plan["time_budget_s"]
    share = round((t.time_budget_s - cfg.END_RESERVE_S - started_s) / (t.members - k), 2)
    if share < cfg.LEAST_BUDGET_S:
        raise RunError(
            f"training.time_budget_s={t.time_budget_s:g} leaves {share:.1f} s for member "
            f"{k + 1} of {t.members}, and a run needs at least {cfg.LEAST_BUDGET_S}; give a "
            "larger budget or fewer training.members"
        )
    return share


def train_member(train, config, output, k, where, clock):
    """Trains (or resumes) member `k` on its own clock; returns its `TrainResult`.
    `where`: `(data_dir, verbose)` as `train` takes them."""
    run_dir = member_dir(output, k)
    started = clock()
    member = member_config(config, k, member_budget(config, run_dir, k, started))
    seconds = member.training.time_budget_s
    print(
        f"Member {k + 1} of {config.training.members}: seed {member.seed}"
        + (f", {seconds:g} s of the budget" if seconds else ""),
        flush=True,
    )
    data_dir, verbose = where
    return train(member, run_dir, data_dir, verbose, lambda: clock() - started)


def finished_member(config, output, k, data):
    """Member `k` as a `TrainResult` when an earlier process finished it, else None: its
    saved network predicts the validation and test images again."""
    run_dir = member_dir(output, k)
    metrics = rundir.read_json(run_dir / "metrics.json")
    if metrics is None:
        return None
    model = load_model(run_dir / "model.keras")
    strategy = distribute.make_strategy(config.distribute.strategy, config.distribute.cpu_devices)
    batch = config.training.batch_size * strategy.num_replicas_in_sync
    _, (x_val, _), (x_test, _) = data
    logits = {
        split: np.asarray(distribute.predict_logits(strategy, model, x, batch), dtype="float64")
        for split, x in (("validation", x_val), ("test", x_test))
    }
    history = pd.DataFrame(rundir.read_history(run_dir / "history.csv"))
    print(f"Member {k + 1} of {config.training.members}: finished in {run_dir}", flush=True)
    metrics = {**metrics, "budget_kept": None}  # planned by an earlier process
    return TrainResult(model, history, metrics, run_dir, logits)


def mean_softmax_logits(logits):
    """The log of the mean softmax of a list of logit arrays (`LogMeanSoftmax` in numpy)."""
    return logsumexp(np.stack([log_softmax(x) for x in logits]), axis=0) - np.log(len(logits))


def ensemble_model(members):
    """One network of `members`: it outputs the log of their mean softmax, so its softmax is
    that mean. Compiled to be evaluated (its loss: cross-entropy of its logits)."""
    inputs = keras.Input(shape=members[0].input.shape[1:], name="image")
    outputs = [
        keras.Model(m.input, m.output, name=f"member_{k + 1}")(inputs)
        for k, m in enumerate(members)
    ]
    model = keras.Model(inputs, LogMeanSoftmax(name="log_mean_softmax")(outputs), name="ensemble")
    model.compile(
        optimizer="sgd",  # never used; unlike Keras' default, it has no state to save
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def write_results(config, output, members, data, timing):
    """Scores the ensemble, writes `model.keras` and then `metrics.json`, and returns the
    `TrainResult` (its history: the members', one after another, with a `member` column).
    `timing`: `(clock, planned_now)`, whether this process planned every member's budget."""
    clock, planned_now = timing
    _, (_, y_val), (_, y_test) = data
    logits = {
        split: mean_softmax_logits([m.logits[split] for m in members])
        for split in ("validation", "test")
    }
    test_loss, test_accuracy = logit_scores(logits["test"], y_test)
    model = ensemble_model([m.model for m in members])
    files.save_model(model, output / "model.keras")
    metrics = {
        "test_loss": test_loss,
        "test_accuracy": test_accuracy,
        "val_accuracy": logit_scores(logits["validation"], y_val)[1],
        "temperature": fit_temperature(logits["validation"], y_val),
        **_member_record(config, members),
        "wall_time_s": (wall_time_s := round(clock(), 2)),
        **budget.record(config.training.time_budget_s, planned_now, wall_time_s),
        "process_wall_time_s": seconds_since_process_start(),
    }
    files.write_json(output / "metrics.json", metrics)  # marks the ensemble complete
    print(
        f"Test accuracy {test_accuracy:.4f}, test loss {test_loss:.4f} (the mean of "
        f"{len(members)} networks' softmax; theirs "
        + ", ".join(f"{m.metrics['test_accuracy']:.4f}" for m in members)
        + f"); {output}",
        flush=True,
    )
    history = pd.concat(
        [m.history.assign(member=k + 1) for k, m in enumerate(members)], ignore_index=True
    )
    return TrainResult(model, history[["member", *members[0].history]], metrics, output, logits)


def _member_record(config, members):
    """What `metrics.json` says of the members: each one's scores, and their sums."""
    first = members[0].metrics
    fit_time_s = sum(m.metrics["fit_time_s"] for m in members)
    epochs = sum(m.metrics["epochs"] for m in members)
    keys = ("test_accuracy", "val_accuracy", "epochs", "wall_time_s")
    return {
        "members": [
            {
                "run_dir": str(m.run_dir),
                "seed": config.seed + SEED_STEP * k,
                **{key: m.metrics[key] for key in keys},
            }
            for k, m in enumerate(members)
        ],
        "epochs": round(epochs, 4),  # of all members
        "fit_time_s": round(fit_time_s, 2),
        "train_images_per_s": round(first["train_size"] * epochs / fit_time_s, 1),
        **{k: first[k] for k in ("train_size", "val_size", "test_size", "precision", "device")},
        **{k: first[k] for k in ("backend", "tensorflow_version", "keras_version")},
    }
