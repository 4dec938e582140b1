"""Ensembles trained to one budget (`training.members`): members, scores, budget, resume."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from fashion_keras import ensemble
from fashion_keras.config import END_RESERVE_S, ConfigError, load_config
from fashion_keras.data import load_data
from fashion_keras.metrics import log_softmax, logit_scores
from fashion_keras.models import load_model
from fashion_keras.rundir import RunError, evaluate_run, load_run
from fashion_keras.train import train
from test_crash import weights_digest

from conftest import ROOT

SMALL = ["data.train_limit=1000", "data.eval_limit=300", "training.members=2"]


def test_members_config_is_checked():
    with pytest.raises(ConfigError, match="training.members"):
        load_config("baseline", ["training.members=0"])
    with pytest.raises(ConfigError, match="the last member's seed"):
        load_config("baseline", ["training.members=2", "seed=4294967000"])
    with pytest.raises(ConfigError, match="multi_worker"):
        load_config("baseline", ["training.members=2", "distribute.strategy=multi_worker"])
    with pytest.raises(ConfigError, match=r"cannot hold 3 training.members.*more than 32 \("):
        load_config("fast", ["training.time_budget_s=32", "training.members=3"])


def test_a_share_too_small_is_refused_before_anything_is_written(tmp_path):
    config = load_config("fast", [*SMALL, "training.time_budget_s=23"])
    with pytest.raises(RunError, match="leaves 8.0 s for member 1 of 2"):
        train(config, tmp_path / "run", verbose=0, clock=lambda: 5.0)  # 5 s for start-up
    assert not (tmp_path / "run").exists()  # free for the same command with a larger budget


def test_each_member_gets_an_equal_share_of_what_is_left(tmp_path):
    config = load_config("fast", ["training.time_budget_s=100", "training.members=3"])
    reserve = END_RESERVE_S
    assert ensemble.member_budget(config, tmp_path, 0, 4.0) == round((96 - reserve) / 3, 2)
    assert ensemble.member_budget(config, tmp_path, 2, 70.0) == round(30 - reserve, 2)
    # A resumed member keeps the budget it planned with.
    (tmp_path / "plan.json").write_text(json.dumps({"time_budget_s": 31.5}))
    assert ensemble.member_budget(config, tmp_path, 2, 90.0) == 31.5
    with pytest.raises(RunError, match="leaves 4.0 s for member 3 of 3"):
        ensemble.member_budget(config, tmp_path / "new", 2, 100 - reserve - 4)
    assert ensemble.member_budget(load_config("baseline"), tmp_path, 0, 4.0) is None


@pytest.mark.slow
def test_ensemble_keeps_its_budget_and_scores_the_mean_softmax(tmp_path):
    config = load_config("fast", [*SMALL, "training.time_budget_s=30"])
    result = train(config, tmp_path / "run", verbose=0)
    metrics, run = result.metrics, tmp_path / "run"

    # Two ordinary runs with their own seeds, each within its share of the budget.
    seeds = [
        yaml.safe_load((run / f"member-{k}" / "config.yaml").read_text())["seed"] for k in (1, 2)
    ]
    assert seeds == [42, 1042] == [m["seed"] for m in metrics["members"]]
    shares = [
        json.loads((run / f"member-{k}/plan.json").read_text())["time_budget_s"] for k in (1, 2)
    ]
    # The first gets half of what is left after start-up and the reserve; the second, what
    # the first left.
    assert (30 - END_RESERVE_S - 5) / 2 <= shares[0] <= (30 - END_RESERVE_S) / 2
    assert metrics["budget_kept"] and metrics["wall_time_s"] <= 30
    assert metrics["epochs"] == pytest.approx(sum(m["epochs"] for m in metrics["members"]))

    # The scores are those of the members' mean softmax, from their saved networks.
    _, (x_val, y_val), (x_test, y_test) = load_data(train_limit=1000, eval_limit=300)
    members = [load_model(run / f"member-{k}" / "model.keras") for k in (1, 2)]
    member_logits = [m.predict(x_test, verbose=0) for m in members]
    assert not np.allclose(*member_logits)  # two networks, not one twice
    probabilities = np.mean([np.exp(log_softmax(x)) for x in member_logits], axis=0)
    assert metrics["test_accuracy"] == np.mean(probabilities.argmax(axis=1) == y_test)
    assert [m["test_accuracy"] for m in metrics["members"]] == [
        logit_scores(x, y_test)[1] for x in member_logits
    ]
    # The saved ensemble is one network that predicts that mean (its softmax), as `evaluate`
    # and `predict` read it.
    saved = load_model(run / "model.keras").predict(x_test, verbose=0)
    np.testing.assert_allclose(np.exp(log_softmax(saved)), probabilities, atol=1e-5)
    assert evaluate_run(run)["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert metrics["test_loss"] == pytest.approx(
        -np.log(probabilities[np.arange(len(y_test)), y_test]).mean(), rel=1e-4
    )
    val_probabilities = np.mean(
        [np.exp(log_softmax(m.predict(x_val, verbose=0))) for m in members], axis=0
    )
    assert metrics["val_accuracy"] == np.mean(val_probabilities.argmax(axis=1) == y_val)
    assert len(x_val) == 300

    assert list(result.history["member"].unique()) == [1, 2]
    with pytest.raises(RunError, match="holds an ensemble"):
        load_run(run)
    with pytest.raises(RunError, match="already holds a finished run"):
        train(config, run, verbose=0)


def test_ensemble_refuses_a_run_directory_of_another_config(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text((ROOT / "src/fashion_keras/presets/fast.yaml").read_text())
    with pytest.raises(RunError, match="different config"):
        train(load_config("fast", SMALL), run, verbose=0)


# --------------------------------------------------------------------------- crash and resume

COMMAND = [sys.executable, "-m", "fashion_keras.cli", "train", "--config", "baseline"]
SETS = [
    *SMALL,
    "data.train_limit=200",
    "data.eval_limit=100",
    "training.epochs=2",
    "training.deterministic=true",
    "training.precision=float32",
]


def run_ensemble(run_dir, **env):
    args = [*COMMAND, *(a for s in SETS for a in ("--set", s)), "--output", str(run_dir)]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FASHION_KERAS_FAILPOINT")}
    return subprocess.run(
        args, capture_output=True, text=True, timeout=600, cwd=ROOT, env={**clean, **env}
    )


def outcome(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    keys = ("test_loss", "test_accuracy", "val_accuracy", "temperature", "epochs")
    paths = ["model.keras", "member-1/model.keras", "member-2/model.keras"]
    members = [
        {k: v for k, v in m.items() if k not in ("run_dir", "wall_time_s")}
        for m in metrics["members"]
    ]
    return {
        "metrics": {k: metrics[k] for k in keys},
        "members": members,
        **{p: weights_digest(run_dir / p) for p in paths},
    }


@pytest.mark.slow
def test_a_killed_ensemble_resumes_where_it_stopped(tmp_path):
    log = tmp_path / "moments.txt"
    reference = run_ensemble(tmp_path / "reference", FASHION_KERAS_FAILPOINT_LOG=str(log))
    assert reference.returncode == 0, reference.stderr[-2000:]
    moments = log.read_text().splitlines()
    finished = moments.index("renamed member-1/metrics.json") + 1  # member 1 is finished
    in_member_2 = moments.index("renamed backup/state.json", finished) + 1  # its epoch 1
    ensemble_end = moments.index("written reference/metrics.json") + 1  # not yet renamed
    expected = outcome(tmp_path / "reference")

    for moment, says in [
        (finished, "Member 1 of 2: finished in"),
        (in_member_2, "Resuming after epoch 1"),
        (ensemble_end, "Member 2 of 2: finished in"),
    ]:
        run = tmp_path / f"killed-at-{moment}"
        killed = run_ensemble(run, FASHION_KERAS_FAILPOINT=str(moment))
        assert killed.returncode == -9, (moment, killed.stderr[-2000:])
        assert not (run / "metrics.json").exists()
        member_1 = (run / "member-1" / "model.keras").stat().st_mtime_ns
        rerun = run_ensemble(run)
        assert rerun.returncode == 0, (moment, rerun.stderr[-2000:])
        assert says in rerun.stdout, (moment, rerun.stdout[-3000:])
        # Member 1 was finished: the rerun kept it, not trained it again.
        assert (run / "member-1" / "model.keras").stat().st_mtime_ns == member_1
        assert outcome(run) == expected, moment
        assert not list(run.rglob(".*.part*")), moment  # nothing half-written is left
