"""Interrupted runs resume to the same result; deterministic runs repeat exactly."""

import json
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from conftest import CONFIGS, ROOT, run_cli

pytestmark = pytest.mark.slow

SETS = [
    "training.epochs=3",
    "data.train_limit=1000",
    "data.eval_limit=500",
    "training.deterministic=true",
]

# Runs the CLI with os.replace patched in fashion_keras.files so the process SIGKILLs itself
# just before the Nth rename onto a file named TARGET: the temporary file is fully written
# but not yet in place, which is the worst moment to die while writing a checkpoint.
KILLER = """
import os, signal, sys
import fashion_keras.files as files
target, nth = sys.argv[1], int(sys.argv[2])
seen = 0
real_replace = os.replace
def replace(src, dst):
    dst = str(dst)
    global seen
    name = os.path.basename(dst)
    if name == target or (target == "*.weights.h5" and name.endswith(".weights.h5")):
        seen += 1
        if seen == nth:
            os.kill(os.getpid(), signal.SIGKILL)
    real_replace(src, dst)
files.os.replace = replace
from fashion_keras.cli import main
sys.exit(main(sys.argv[3:]))
"""


def train_args(run_dir):
    sets = [arg for s in SETS for arg in ("--set", s)]
    return ["train", "--config", str(CONFIGS / "baseline.yaml"), *sets, "--output", str(run_dir)]


def outcome(run_dir):
    history = pd.read_csv(run_dir / "history.csv").drop(columns="epoch_time")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return history, {
        k: metrics[k] for k in ("test_loss", "test_accuracy", "best_epoch", "best_val_loss")
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    result = run_cli(*train_args(run_dir))
    assert result.returncode == 0, result.stderr[-2000:]
    return outcome(run_dir)


def test_deterministic_runs_are_identical(reference, tmp_path):
    result = run_cli(*train_args(tmp_path / "again"))
    assert result.returncode == 0, result.stderr[-2000:]
    history, metrics = outcome(tmp_path / "again")
    pd.testing.assert_frame_equal(history, reference[0], check_exact=True)
    assert metrics == reference[1]


def assert_complete_and_equal(run_dir, reference):
    assert not list(run_dir.rglob("*.part*")), "temporary files left behind"
    assert not (run_dir / "backup").exists()
    history, metrics = outcome(run_dir)
    assert history["epoch"].tolist() == [1, 2, 3]
    pd.testing.assert_frame_equal(history, reference[0], check_exact=True)
    assert metrics == reference[1]


@pytest.mark.parametrize(
    "target, nth",
    [
        ("*.weights.h5", 2),  # while writing the backup after epoch 2
        ("state.json", 1),  # backup weights of epoch 1 written, its state.json not yet
        ("best.keras", 2),  # while writing the best checkpoint of epoch 2
        ("model.keras", 1),  # training done, final model being written
    ],
)
def test_sigkill_while_writing_then_rerun_resumes(reference, tmp_path, target, nth):
    run_dir = tmp_path / "run"
    killed = subprocess.run(
        [sys.executable, "-c", KILLER, target, str(nth), *train_args(run_dir)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (run_dir / "metrics.json").exists()
    for name in ("history.csv", "best.keras"):  # whatever is there is whole
        if (run_dir / name).exists():
            assert (run_dir / name).stat().st_size > 0
    resumed = run_cli(*train_args(run_dir))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_complete_and_equal(run_dir, reference)


def _start_and_wait_for_epoch(run_dir, epochs_done, extra_wait):
    process = subprocess.Popen(
        [sys.executable, "-m", "fashion_keras.cli", *train_args(run_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        history = run_dir / "history.csv"
        if history.exists() and len(history.read_text().splitlines()) > epochs_done:
            break
        time.sleep(0.02)
    time.sleep(extra_wait)
    return process


@pytest.mark.parametrize("extra_wait", [0.0, 0.3])
def test_sigkill_mid_epoch_then_rerun_resumes(reference, tmp_path, extra_wait):
    run_dir = tmp_path / "run"
    process = _start_and_wait_for_epoch(run_dir, 1, extra_wait)
    process.kill()
    process.communicate(timeout=60)
    resumed = run_cli(*train_args(run_dir))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_complete_and_equal(run_dir, reference)


def test_ctrl_c_stops_cleanly_and_says_how_to_resume(reference, tmp_path):
    run_dir = tmp_path / "run"
    process = _start_and_wait_for_epoch(run_dir, 1, 0.2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    if process.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert process.returncode == 130, stderr[-2000:]
    assert "to resume" in stderr and "Traceback" not in stderr
    assert (run_dir / "backup" / "state.json").exists()
    resumed = run_cli(*train_args(run_dir))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Resuming after epoch" in resumed.stdout
    assert_complete_and_equal(run_dir, reference)
