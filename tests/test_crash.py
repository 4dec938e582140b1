"""Crash consistency, tested at every moment a run makes a durable change.

A reference run lists its durable moments (`fashion_keras.failpoints`): each temporary file
written, each rename, each deletion, the test evaluation. For each moment a run is killed
right there (SIGKILL) and run again; the rerun must complete, must say where it resumed,
must leave nothing of ours behind and touch nothing of the user's, and must end bit for bit
as the uninterrupted run: the same history, metrics and weights. A write that fails as a
full disk does is tested the same way. The run carries every kind of state a run has:
dropout and random shifts and flips (the layers' random state), a cosine learning rate,
early stopping that fires, the best checkpoint, and a time budget re-planned after a warm-up
epoch and after every epoch (its epoch counts fixed by `crash_harness.py`, so that both runs
plan the same).

`make test` runs a sample of the moments; `make test-crash` runs every one.
"""

import hashlib
import io
import json
import re
import resource
import signal
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor

import h5py
import pandas as pd
import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow

HARNESS = ROOT / "tests" / "crash_harness.py"
PLANNED_EPOCHS = 8  # then 1 + 8 after the warm-up; early stopping ends the run at epoch 4
SETS = [
    "data.train_limit=100",
    "data.eval_limit=100",
    "model.variant=dropout",
    "model.random_translation=0.1",
    "model.random_shift=1",
    "model.random_flip=horizontal",
    "training.epochs=null",
    "training.time_budget_s=600",
    "training.batch_size=50",
    "training.learning_rate=0.02",
    "training.lr_schedule=cosine",
    "training.warmup_epochs=1",
    "training.early_stopping_patience=3",
    "training.deterministic=true",
    "training.precision=float32",
]
METRICS = (
    "test_loss",
    "test_accuracy",
    "evaluated_epoch",
    "temperature",
    "best_epoch",
    "best_val_loss",
    "epochs",
    "stopped_early",
    "time_budget_s",
)


def run(run_dir, env=None, limit_file_size=None):
    args = [sys.executable, str(HARNESS), str(PLANNED_EPOCHS), "train", "--config", "dropout"]
    args += [a for s in SETS for a in ("--set", s)] + ["--output", str(run_dir)]

    def limit():
        if limit_file_size:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_size, limit_file_size))

    return subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env={**_clean_env(), **(env or {})},
        preexec_fn=limit,
    )


def _clean_env():
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("FASHION_KERAS_FAILPOINT")}


def weights_digest(path):
    """SHA-256 of every weight array in a `.keras` file (its zip's HDF5 weights)."""
    with zipfile.ZipFile(path) as archive:
        data = archive.read("model.weights.h5")
    digest = {}
    with h5py.File(io.BytesIO(data), "r") as f:
        f.visititems(
            lambda name, item: (
                digest.__setitem__(name, hashlib.sha256(item[()]).hexdigest())
                if isinstance(item, h5py.Dataset)
                else None
            )
        )
    return digest


def outcome(run_dir):
    """What a finished run must reproduce bit for bit (the timings aside)."""
    history = pd.read_csv(run_dir / "history.csv").drop(columns="epoch_time")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {
        "history": history.to_csv(index=False),
        "metrics": {k: metrics[k] for k in METRICS},
        "model.keras": weights_digest(run_dir / "model.keras"),
        "best.keras": weights_digest(run_dir / "best.keras"),
    }


def user_files(parent):
    """The user's files beside the run directory: two of them named like temporaries."""
    (parent / "notes").mkdir(parents=True)
    (parent / "notes" / ".draft.partial.txt").write_text("keep")
    (parent / ".model.0123abcd.part.keras").write_text("not ours either")
    (parent / "keep.txt").write_text("keep")
    return snapshot(parent, exclude="run")


def snapshot(parent, exclude):
    return {
        str(p.relative_to(parent)): (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else b"")
        for p in sorted(parent.rglob("*"))
        if p.relative_to(parent).parts[0] != exclude
    }


def committed_epoch(run_dir):
    state = run_dir / "backup" / "state.json"
    return max(map(int, json.loads(state.read_text())["epochs"])) if state.exists() else 0


def epochs_logged(output):
    return [int(m) for m in re.findall(r"^Epoch (\d+)/\d+", output, flags=re.MULTILINE)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run: its outcome and the durable moments it passed, in order."""
    from fashion_keras.data import load_data

    load_data(train_limit=100, eval_limit=100)  # the decoded cache exists before any run
    parent = tmp_path_factory.mktemp("reference")
    log = parent / "moments.txt"
    result = run(parent / "run", env={"FASHION_KERAS_FAILPOINT_LOG": str(log)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert epochs_logged(result.stdout) == [1, 2, 3, 4], "the run must stop early, at epoch 4"
    moments = log.read_text().splitlines()
    return outcome(parent / "run"), moments


def check_moment(reference, parent, index, how="kill"):
    """Stops a run at moment `index` (1-based), reruns it; returns what went wrong, or None."""
    expected, moments = reference
    before = user_files(parent)
    run_dir = parent / "run"
    armed = f"{index}" if how == "kill" else f"{index}:full"
    stopped = run(run_dir, env={"FASHION_KERAS_FAILPOINT": armed})
    name = f"{how} at {index} ({moments[index - 1]})"
    if how == "kill" and stopped.returncode != -signal.SIGKILL:
        return f"{name}: exit {stopped.returncode}, not killed: {stopped.stderr[-500:]}"
    if how == "full":
        lines = [line for line in stopped.stderr.splitlines() if "fashion-keras" in line]
        if stopped.returncode != 2 or "No space left on device while writing" not in lines[-1]:
            return f"{name}: exit {stopped.returncode}: {stopped.stderr[-500:]}"
    finished = (run_dir / "metrics.json").exists()
    resumed_from = committed_epoch(run_dir)
    rerun = run(run_dir)
    if finished:  # killed after the file that marks the run complete
        if rerun.returncode != 2 or "finished run" not in rerun.stderr:
            return f"{name}: the rerun of a finished run: exit {rerun.returncode}"
    elif rerun.returncode != 0:
        return f"{name}: rerun failed: {rerun.stderr[-800:]}"
    elif json.loads((run_dir / "metrics.json").read_text())["resumed_from_epoch"] != resumed_from:
        return f"{name}: the rerun did not resume from epoch {resumed_from}"
    elif epochs_logged(rerun.stdout) != list(range(resumed_from + 1, 5)):
        return f"{name}: the rerun trained epochs {epochs_logged(rerun.stdout)}"
    leftovers = [p.name for p in run_dir.rglob("*") if ".part" in p.name or p.name == "backup"]
    if leftovers:
        return f"{name}: left behind {leftovers}"
    if snapshot(parent, exclude="run") != before:
        return f"{name}: files outside the run directory changed"
    got = outcome(run_dir)
    differ = [key for key in expected if got[key] != expected[key]]
    return f"{name}: differs from the uninterrupted run in {differ}" if differ else None


def sweep(reference, tmp_path, indices, how="kill"):
    with ThreadPoolExecutor(max_workers=2) as pool:  # most of each run is Python start-up
        problems = pool.map(
            lambda i: check_moment(reference, tmp_path / f"{how}-{i}", i, how), indices
        )
        problems = [p for p in problems if p]
    assert not problems, "\n".join(problems)


def sample(moments, patterns):
    """The first moment matching each pattern (1-based); for `(pattern, n)`, the n-th."""
    found = []
    for pattern in patterns:
        pattern, n = pattern if isinstance(pattern, tuple) else (pattern, 1)
        found.append([i for i, m in enumerate(moments, 1) if re.fullmatch(pattern, m)][n - 1])
    return sorted(set(found))


def test_the_moments_are_the_durable_changes(reference):
    _, moments = reference
    assert moments[0] == "removed run/.budget.part"  # the warm-up's scratch, then the plan
    assert moments[1:5] == [
        "written run/plan.json",
        "renamed run/plan.json",
        "written run/config.yaml",
        "renamed run/config.yaml",
    ]
    commits = [m for m in moments if m == "renamed backup/state.json"]
    assert len(commits) == 4
    # The re-plan after the warm-up epoch: written before that epoch's commit.
    replan = moments.index("renamed run/plan.json", 5)
    assert moments[replan + 1 : replan + 3] == [
        "written run/config.yaml",
        "renamed run/config.yaml",
    ]
    assert replan < moments.index("renamed backup/state.json")
    assert moments[-6:] == [
        "evaluated",
        "written run/model.keras",
        "renamed run/model.keras",
        "written run/metrics.json",
        "renamed run/metrics.json",
        "removed run/backup",
    ]


# make test's sample: the moments each planted bug of the note in docs/reliability.md needs.
SAMPLE = [
    r"renamed run/history\.csv",  # in the warm-up, before the re-plan: starts from epoch 0
    (r"renamed run/plan\.json", 2),  # re-planned, config.yaml not yet: starts again
    r"renamed backup/state\.json",  # epoch 1 committed
    r"written backup/epoch-0004\.weights\.h5",  # waiting (patience) after the best epoch
    r"evaluated",  # after early stopping fired
]
FULL_SAMPLE = [r"written run/best\.keras"]  # a committed best epoch not yet published


def test_killed_at_sampled_moments_resumes_bit_identical(reference, tmp_path):
    sweep(reference, tmp_path, sample(reference[1], SAMPLE))


@pytest.mark.long  # for its time: make test-long runs it, make test does not
def test_full_disk_at_sampled_writes_keeps_state_and_resumes(reference, tmp_path):
    sweep(reference, tmp_path, sample(reference[1], FULL_SAMPLE), how="full")


@pytest.mark.crash
def test_real_file_size_limit_fails_cleanly_then_resumes(reference, tmp_path):
    # A real EFBIG from the kernel (ulimit -f), mid-run: epochs 1-2 are committed first.
    expected, moments = reference
    run_dir = tmp_path / "run"
    second_commit = [i for i, m in enumerate(moments, 1) if m == "renamed backup/state.json"][1]
    stopped = run(run_dir, env={"FASHION_KERAS_FAILPOINT": str(second_commit)})
    assert stopped.returncode == -signal.SIGKILL
    limited = run(run_dir, limit_file_size=1_000_000)  # the model files are ~4 MB
    assert limited.returncode == 2, limited.stderr[-2000:]
    assert limited.stderr.strip().splitlines()[-1].startswith("fashion-keras: error: File too")
    assert committed_epoch(run_dir) == 2  # the previous state is intact
    rerun = run(run_dir)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert epochs_logged(rerun.stdout) == [3, 4]
    assert outcome(run_dir) == expected


@pytest.mark.crash
def test_killed_at_every_moment_resumes_bit_identical(reference, tmp_path):
    sweep(reference, tmp_path, range(1, len(reference[1]) + 1))


@pytest.mark.crash
def test_full_disk_at_every_write_keeps_state_and_resumes(reference, tmp_path):
    writes = [i for i, m in enumerate(reference[1], 1) if m.startswith("written")]
    sweep(reference, tmp_path, writes, how="full")
