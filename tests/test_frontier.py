"""bench/frontier.py keeps each run's result as it ends: a stopped frontier goes on where it
was, and never mixes results of another setup."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT

FRONTIER = ROOT / "bench" / "frontier.py"
BUDGET = ["--budgets", "0.5", "--train-limit", "1000"]  # 30 s runs on a subset


def _frontier(runs, *args, **popen):
    out = runs.parent
    command = [sys.executable, str(FRONTIER), *args, "--runs", str(runs)]
    command += ["--json", str(out / "frontier.json"), "--plot", str(out / "frontier.png")]
    return subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen
    )


@pytest.fixture
def bench(monkeypatch):
    """bench/frontier.py as a module."""
    monkeypatch.syspath_prepend(str(FRONTIER.parent))
    import frontier

    return frontier


def test_a_kept_result_is_used_only_if_it_covers_the_budget_and_only_finished_ones_are_kept(
    bench, tmp_path
):
    path, calls = tmp_path / "keras-seed42.json", []

    def run(exit_status=0):
        calls.append(exit_status)
        return {"exit_status": exit_status, "stopped_past_budget": False, "up_to_s": 60}

    assert bench.kept_or_run(path, lambda: run(exit_status=1))["exit_status"] == 1
    assert not path.exists()  # a failed run is tried again, not kept
    first = bench.kept_or_run(path, run)
    assert bench.kept_or_run(path, run, covers=lambda c: c["up_to_s"] >= 60) == first
    assert calls == [1, 0]
    bench.kept_or_run(path, run, covers=lambda c: c["up_to_s"] >= 300)
    assert calls == [1, 0, 0]


def test_an_unused_path_leaves_an_earlier_attempt_alone(bench, tmp_path):
    (tmp_path / "60s-seed42").mkdir()
    (tmp_path / "60s-seed42-2").mkdir()
    assert bench.unused_path(tmp_path / "60s-seed42") == tmp_path / "60s-seed42-3"
    assert bench.unused_path(tmp_path / "keras.json") == tmp_path / "keras.json"


def test_results_of_another_setup_are_refused_before_anything_runs(bench, tmp_path):
    runs, args = tmp_path / "runs", ["--contenders", "project", *BUDGET]
    runs.mkdir()
    other = {**bench.setup_of(bench.parse_args(args)), "machine": "another CPU", "code": "0"}
    (runs / "frontier-setup.json").write_text(json.dumps(other))
    stdout, stderr = _frontier(runs, *args).communicate(timeout=120)
    assert stderr.strip().splitlines()[-1] == (
        f"frontier: --runs {runs} keeps results measured with another machine, code (see "
        f"{runs / 'frontier-setup.json'}); pass a new --runs DIR to measure again"
    )
    assert not (runs / "results").exists() and "started" not in stdout


@pytest.mark.long  # for its time: make test-long runs it, make test does not
@pytest.mark.slow
def test_a_killed_frontier_keeps_its_finished_runs_and_runs_the_rest_anew(tmp_path):
    runs = tmp_path / "runs"
    kept = runs / "results" / "project-30s-seed42.json"
    args = ["--contenders", "project", "--seeds", "2", *BUDGET]
    stopped = runs / "30s-seed43"  # the next run's directory: killed once it has begun
    killed = _frontier(runs, *args, start_new_session=True)
    deadline = time.monotonic() + 240
    while not stopped.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stopped.exists() and kept.exists(), killed.communicate()[1]
    os.killpg(killed.pid, signal.SIGKILL)  # the bench and the run it launched
    killed.wait()
    before = json.loads(kept.read_text())

    stdout, stderr = _frontier(runs, *args).communicate(timeout=240)
    assert f"kept from an earlier frontier ({before['ended']}): {kept}" in stdout, stderr
    report = json.loads((tmp_path / "frontier.json").read_text())
    first, second = report["contenders"]["fashion_keras"]["runs"]
    assert first == before  # not run again: a rerun's times and scores would differ
    assert second["seed"] == 43 and second["result_s"] <= 30
    output = second["command"].split("--output ")[1].split()[0]
    metrics = json.loads((runs / output / "metrics.json").read_text())
    assert second["metrics"]["test_accuracy"] == metrics["test_accuracy"]
    assert output == f"{stopped}-2"  # not resumed: its time would not be launch to result
    assert json.loads((runs / "results" / "project-30s-seed43.json").read_text()) == second
