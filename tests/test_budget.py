"""Training to a time budget: the plan, its record, its reproduction and its resume."""

import json
import math

import keras
import numpy as np
import pandas as pd
import pytest
import yaml

from fashion_keras import budget
from fashion_keras.callbacks import AnnealLearningRate
from fashion_keras.config import load_config
from fashion_keras.train import compile_model

from conftest import epochs_logged, run_cli

BUDGET = 25
SETS = [
    f"training.time_budget_s={BUDGET}",
    "data.train_limit=3000",
    "data.eval_limit=500",
    "training.deterministic=true",
]


@pytest.mark.parametrize("shape, half", [("cosine", 0.5), ("linear", 0.5)])
def test_learning_rate_anneals_to_zero_over_the_horizon(shape, half):
    schedule = AnnealLearningRate(0.01, total_steps=100, steps_per_epoch=10, shape=shape)
    assert schedule.rate(0) == 0.01 and schedule.rate(100) == 0 and schedule.rate(150) == 0
    assert schedule.rate(50) == pytest.approx(0.01 * half)
    assert schedule.rate(25) == pytest.approx(
        0.01 * ((1 + math.cos(math.pi / 4)) / 2 if shape == "cosine" else 0.75)
    )


def test_the_optimizer_follows_the_schedule_batch_by_batch():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    seen = []
    record = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: seen.append(float(model.optimizer.learning_rate))
    )
    schedule = AnnealLearningRate(0.01, total_steps=8, steps_per_epoch=4, shape="linear")
    x, y = np.zeros((16, 4)), np.zeros((16, 2))
    model.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=[schedule, record])
    np.testing.assert_allclose(seen, [0.01 * (1 - s / 8) for s in range(8)], rtol=1e-6)


def test_planning_leaves_the_model_as_it_was(tmp_path):
    config = load_config("dropout", ["training.time_budget_s=60"])
    model = compile_model(config, policy="float32")
    rng = np.random.default_rng(0)
    x, y = rng.random((700, 28, 28, 1), "float32"), rng.integers(0, 10, 700)
    model.optimizer.build(model.trainable_variables)
    variables = [*model.variables, *model.optimizer.variables]
    before = [v.numpy() for v in variables]
    plan = budget.plan_epochs(
        model, config, (x, y), (x[:300], y[:300]), 600, 128, tmp_path, elapsed_s=lambda: 10.0
    )
    # Weights, optimizer state (its step count included) and the dropout layers' random
    # state: all as before, so the run that follows is the one the plan describes.
    for variable, value in zip(variables, before, strict=True):
        np.testing.assert_array_equal(variable.numpy(), value, err_msg=variable.path)
    assert int(model.optimizer.iterations) == 0
    assert plan.epochs >= 1 and plan.seconds_per_step > 0 and plan.validation_s > 0
    steps = math.ceil(700 / 128)
    assert plan.seconds_per_epoch >= steps * plan.seconds_per_step
    assert plan.expected_end_s <= 60 or plan.epochs == 1
    assert list(tmp_path.iterdir()) == []  # the timed writes left nothing


def _train(run_dir, sets=SETS, config="fast"):
    result = run_cli(
        "train", "--config", config, *[a for s in sets for a in ("--set", s)], "--output", run_dir
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def _outcome(run_dir):
    history = pd.read_csv(run_dir / "history.csv").drop(columns="epoch_time")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return history, {k: metrics[k] for k in ("test_loss", "test_accuracy", "epochs")}


@pytest.fixture(scope="module")
def budgeted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("budget") / "run"
    return run_dir, _train(run_dir)


@pytest.mark.slow
def test_a_budgeted_run_records_its_plan_and_keeps_its_budget(budgeted):
    run_dir, result = budgeted
    plan = json.loads((run_dir / "plan.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())["training"]
    assert f"Time budget {BUDGET} s:" in result.stdout
    assert plan["time_budget_s"] == BUDGET and plan["expected_end_s"] <= BUDGET
    assert saved["epochs"] == plan["epochs"] == metrics["epochs"] > 1
    assert saved["time_budget_s"] is None
    assert metrics["plan"] == plan
    assert epochs_logged(result.stdout) == list(range(1, plan["epochs"] + 1))
    # Timing is the frontier benchmark's job; this only catches a plan that ignores the clock.
    assert metrics["process_wall_time_s"] < 2 * BUDGET


@pytest.mark.slow
def test_the_saved_config_repeats_a_budgeted_run(budgeted, tmp_path):
    run_dir, _ = budgeted
    again = _train(tmp_path / "again", sets=[], config=run_dir / "config.yaml")
    assert "Time budget" not in again.stdout  # a fixed number of epochs: nothing to plan
    history, metrics = _outcome(tmp_path / "again")
    pd.testing.assert_frame_equal(history, _outcome(run_dir)[0], check_exact=True)
    assert metrics == _outcome(run_dir)[1]


@pytest.mark.slow
def test_a_resumed_budgeted_run_keeps_its_horizon(budgeted, tmp_path):
    from test_resume import kill_while_writing

    run_dir, _ = budgeted
    resumed_dir = tmp_path / "run"
    args = ["train", "--config", "fast", *[a for s in SETS for a in ("--set", s)]]
    kill_while_writing(resumed_dir, "state.json", 2, [*args, "--output", str(resumed_dir)])
    planned = json.loads((resumed_dir / "plan.json").read_text())["epochs"]
    rerun = _train(resumed_dir)  # the same command, budget and all
    assert "Time budget" not in rerun.stdout and "Resuming after epoch 1" in rerun.stdout
    assert epochs_logged(rerun.stdout) == list(range(2, planned + 1))
    assert json.loads((resumed_dir / "plan.json").read_text())["epochs"] == planned
    # Planned on another occasion, the horizon may differ from the fixture's; where it is
    # the same, so is every epoch.
    if planned == _outcome(run_dir)[1]["epochs"]:
        pd.testing.assert_frame_equal(_outcome(resumed_dir)[0], _outcome(run_dir)[0])
