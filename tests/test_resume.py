"""A run killed at any moment resumes where it stopped, and ends as an uninterrupted one.

Each test proves a resume, not only a correct end: the rerun must say where it resumed
(`resumed_from_epoch`) and must itself train only the epochs that were missing (its own
log), so a from-scratch rerun fails them. A kill at each durable moment of a run with every
kind of state (early stopping's patience included) is tests/test_crash.py's; these cover a
kill mid-epoch, Ctrl-C and SIGTERM.
"""

import json
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from fashion_keras.config import load_config
from fashion_keras.rundir import read_backup
from fashion_keras.train import train

from conftest import ROOT, epochs_logged, run_cli

pytestmark = pytest.mark.slow

SETS = [
    "training.epochs=3",
    "data.train_limit=1000",
    "data.eval_limit=500",
    "training.deterministic=true",
    "training.whitened_init=true",  # a resume keeps the trained first layer
]

# Runs the CLI with os.replace patched in fashion_keras.files so the process SIGKILLs itself
# just before the Nth rename onto a file named TARGET: the temporary file is fully written
# but not yet in place, which is the worst moment to die while writing it.
KILLER = """
import os, signal, sys
import fashion_keras.files as files
target, nth = sys.argv[1], int(sys.argv[2])
seen = 0
real_replace = os.replace
def replace(src, dst):
    global seen
    name = os.path.basename(str(dst))
    if name == target or (target.startswith("*") and name.endswith(target[1:])):
        seen += 1
        if seen == nth:
            os.kill(os.getpid(), signal.SIGKILL)
    real_replace(src, dst)
files.os.replace = replace
from fashion_keras.cli import main
sys.exit(main(sys.argv[3:]))
"""


def train_args(run_dir, sets=SETS, config="baseline"):
    sets = [arg for s in sets for arg in ("--set", s)]
    return ["train", "--config", config, *sets, "--output", str(run_dir)]


def outcome(run_dir):
    history = pd.read_csv(run_dir / "history.csv").drop(columns="epoch_time")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    keys = ("test_loss", "test_accuracy", "best_epoch", "best_val_loss", "evaluated_epoch")
    return history, {k: metrics[k] for k in keys}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    result = run_cli(*train_args(run_dir))
    assert result.returncode == 0, result.stderr[-2000:]
    assert epochs_logged(result.stdout) == [1, 2, 3]
    return outcome(run_dir)


def test_deterministic_runs_are_identical(reference, tmp_path):
    result = run_cli(*train_args(tmp_path / "again"))
    assert result.returncode == 0, result.stderr[-2000:]
    history, metrics = outcome(tmp_path / "again")
    pd.testing.assert_frame_equal(history, reference[0], check_exact=True)
    assert metrics == reference[1]


def kill_while_writing(run_dir, target, nth, args=None):
    killed = subprocess.run(
        [sys.executable, "-c", KILLER, target, str(nth), *(args or train_args(run_dir))],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (run_dir / "metrics.json").exists()


def assert_resumed(run_dir, rerun, resumed_from, reference):
    """The rerun trained exactly the epochs after `resumed_from` and ended as the reference."""
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert epochs_logged(rerun.stdout) == list(range(resumed_from + 1, 4))
    assert json.loads((run_dir / "metrics.json").read_text())["resumed_from_epoch"] == resumed_from
    assert not list(run_dir.rglob("*.part*")), "temporary files left behind"
    assert not (run_dir / "backup").exists()
    history, metrics = outcome(run_dir)
    assert history["epoch"].tolist() == [1, 2, 3]
    pd.testing.assert_frame_equal(history, reference[0], check_exact=True)
    assert metrics == reference[1]


def test_several_batches_a_call_divide_the_epoch_and_resume_bit_identical(tmp_path, capsys):
    # 1,000 images are 8 batches: Keras, running whole calls of 3, would train 9 an epoch,
    # and every later epoch would start off its first batch (a resumed one starts on it).
    # The kill needs a process of its own; the other two runs train in this one. Lookahead
    # steps back after every call: at an epoch's end the weights are its slow ones.
    sets = [*SETS, "training.steps_per_execution=3", "training.lookahead=0.5"]
    train(load_config("baseline", sets), output=tmp_path / "whole", verbose=0)
    assert "training.steps_per_execution=2, not 3" in capsys.readouterr().out
    assert load_config(tmp_path / "whole" / "config.yaml").training.steps_per_execution == 2
    run_dir = tmp_path / "run"
    kill_while_writing(run_dir, "state.json", 2, train_args(run_dir, sets))  # after epoch 1
    resumed = train(load_config("baseline", sets), output=run_dir, verbose=0)
    assert resumed.metrics["resumed_from_epoch"] == 1  # it trained epochs 2 and 3 only
    history, metrics = outcome(run_dir)
    pd.testing.assert_frame_equal(history, outcome(tmp_path / "whole")[0], check_exact=True)
    assert metrics == outcome(tmp_path / "whole")[1]


# Runs the CLI with one more callback that runs `{action}` after the third batch of the
# second epoch, with `{before}` defined first.
AFTER_BATCH_3_OF_EPOCH_2 = """
import os, signal, sys, time
import keras
import fashion_keras.train as train
{before}
class Act(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == 1 and batch == 2:
            {action}
real_make_callbacks = train.make_callbacks
train.make_callbacks = lambda *args, **kwargs: [*real_make_callbacks(*args, **kwargs), Act()]
from fashion_keras.cli import main
sys.exit(main(sys.argv[1:]))
"""

# Pauses for a minute: a signal sent after epoch 1's backup always finds the run mid-epoch,
# on any machine, however fast.
PAUSED = AFTER_BATCH_3_OF_EPOCH_2.format(before="", action="time.sleep(60)")

# `Garbage()` sends the process a SIGTERM while its `__del__` runs: Python swallows the
# exception the handler raises there ("Exception ignored in"), as it may at any epoch's end
# when TensorFlow's iterators are collected. The run must still stop.
GARBAGE = """
class Garbage:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler runs in here, and its exception dies with this call
"""
SWALLOWED_IN_TRAINING = AFTER_BATCH_3_OF_EPOCH_2.format(before=GARBAGE, action="Garbage()")
# The same as the test evaluation ends, after the last epoch's backup.
SWALLOWED_IN_TESTING = f"""
import os, signal, sys, time
import fashion_keras.train as train
{GARBAGE}
real_evaluate = train.evaluate
def evaluate(*args):
    result = real_evaluate(*args)
    Garbage()
    return result
train.evaluate = evaluate
from fashion_keras.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _start_and_wait_for_backup(run_dir, epochs_done, extra_wait):
    process = subprocess.Popen(
        [sys.executable, "-c", PAUSED, *train_args(run_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        # A shell starts background jobs with Ctrl-C ignored, and Python keeps that: undo it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if max(read_backup(run_dir / "backup"), default=0) >= epochs_done:
            break
        time.sleep(0.02)
    time.sleep(extra_wait)
    return process


def test_sigkill_mid_epoch_then_rerun_resumes(reference, tmp_path):
    run_dir = tmp_path / "run"
    process = _start_and_wait_for_backup(run_dir, 1, 0.3)
    process.kill()
    process.communicate(timeout=60)
    backed_up = max(read_backup(run_dir / "backup"), default=0)
    assert backed_up == 1 and not (run_dir / "metrics.json").exists()
    assert_resumed(run_dir, run_cli(*train_args(run_dir)), backed_up, reference)


@pytest.mark.parametrize("sent, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_or_kill_stops_cleanly_and_says_how_to_resume(reference, tmp_path, sent, status):
    run_dir = tmp_path / "run"
    process = _start_and_wait_for_backup(run_dir, 1, 0.2)
    process.send_signal(sent)
    stdout, stderr = process.communicate(timeout=120)
    # 128 + the signal's number (the output says where the signal found the run, if it fails)
    assert process.returncode == status, stdout[-1500:] + stderr[-2000:]
    assert "to resume" in stderr and "Traceback" not in stderr
    backed_up = max(read_backup(run_dir / "backup"), default=0)
    assert backed_up == 1
    rerun = run_cli(*train_args(run_dir))
    assert f"Resuming after epoch {backed_up}" in rerun.stdout
    assert_resumed(run_dir, rerun, backed_up, reference)


@pytest.mark.long
@pytest.mark.parametrize(
    "script, epochs_done", [(SWALLOWED_IN_TRAINING, 1), (SWALLOWED_IN_TESTING, 3)]
)
def test_a_signal_python_swallowed_still_stops_the_run(reference, tmp_path, script, epochs_done):
    run_dir = tmp_path / "run"
    stopped = subprocess.run(
        [sys.executable, "-c", script, *train_args(run_dir)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert "Exception ignored" in stopped.stderr  # the handler's own raise was lost
    assert stopped.returncode == 143, stopped.stdout[-1500:] + stopped.stderr[-2000:]
    # In epoch 2, not after it; or before the results were written.
    assert f"interrupted after {epochs_done} completed epoch(s)" in stopped.stderr
    assert max(read_backup(run_dir / "backup")) == epochs_done
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "model.keras").exists()
    rerun = run_cli(*train_args(run_dir))
    assert f"Resuming after epoch {epochs_done}" in rerun.stdout
    assert_resumed(run_dir, rerun, epochs_done, reference)
