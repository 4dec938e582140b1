"""bench/frontier.py keeps each run's result as it ends: a stopped frontier goes on where it
was, and never mixes results of another setup."""

import contextlib
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


def _frontier(out, *args, **popen):
    """The bench, keeping its runs in `out/runs` and writing its report into `out`."""
    command = [sys.executable, str(FRONTIER), *args, "--runs", str(out / "runs")]
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

    def run(exit_status=0, curve=({"epoch": 1},)):
        calls.append(exit_status)
        return {"exit_status": exit_status, "stopped_past_budget": False, "curve": list(curve)}

    # Not kept, to be tried again: a failed run, a kill that was not the bench's, no curve.
    for failed in (lambda: run(exit_status=1), lambda: run(exit_status=-9), lambda: run(curve=())):
        bench.kept_or_run(path, failed)
        assert not path.exists()
    first = bench.kept_or_run(path, lambda: {**run(), "up_to_s": 60})
    again = bench.kept_or_run(path, run, covers=lambda c: c["up_to_s"] >= 60)
    assert again == {**first, "kept": True} and len(calls) == 4
    bench.kept_or_run(path, run, covers=lambda c: c["up_to_s"] >= 300)
    assert len(calls) == 5 and "up_to_s" not in json.loads(path.read_text())  # run again


def test_an_unused_path_leaves_an_earlier_attempt_alone(bench, tmp_path):
    (tmp_path / "7.5s-seed42").mkdir()
    (tmp_path / "7.5s-seed42-2").mkdir()
    assert bench.unused_path(tmp_path, "7.5s-seed42") == tmp_path / "7.5s-seed42-3"
    assert bench.unused_path(tmp_path, "keras", ".json") == tmp_path / "keras.json"


def test_another_setup_keeps_its_results_in_a_folder_of_its_own(bench, tmp_path):
    setup = bench.setup_of(bench.parse_args(["--contenders", "keras"]))
    folder = bench.setup_dir(tmp_path, setup)
    assert json.loads((folder / "setup.json").read_text()) == setup
    assert bench.setup_dir(tmp_path, setup) == folder
    for change in ({"machine": "AMD EPYC (family 26, model 2; avx2), 2 cores"}, {"code": "0"}):
        assert bench.setup_dir(tmp_path, {**setup, **change}) != folder


def test_two_generations_of_one_cpu_name_are_two_machines(monkeypatch):
    from fashion_keras import machine

    def cpu(family):
        fields = {"model name": "AMD EPYC", "cpu family": family, "model": "17", "flags": "avx2"}
        monkeypatch.setattr(machine, "cpu_info", lambda field: fields.get(field, ""))
        return machine.describe_cpu()

    monkeypatch.setattr(machine.os, "cpu_count", lambda: 2)
    assert cpu("25") == "AMD EPYC (family 25, model 17; avx2), 2 cores"
    assert cpu("26") != cpu("25")
    monkeypatch.setattr(machine, "cpu_info", lambda field: "")  # no /proc/cpuinfo
    monkeypatch.setattr(machine.platform, "processor", lambda: "arm")
    assert machine.describe_cpu() == "arm (no AVX2), 2 cores"


@pytest.mark.long  # for its time: make test-long runs it, make test does not
@pytest.mark.slow
def test_a_killed_frontier_keeps_its_finished_runs_and_runs_the_rest_anew(bench, tmp_path):
    args = ["--contenders", "project", "--seeds", "2", *BUDGET]
    runs = bench.setup_dir(tmp_path / "runs", bench.setup_of(bench.parse_args(args)))
    kept = runs / "results" / "project-30s-seed42.json"
    stopped = runs / "30s-seed43"  # the next run's directory: killed once it has begun
    killed = _frontier(tmp_path, *args, start_new_session=True)
    deadline = time.monotonic() + 240
    while not stopped.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):  # the bench, and the run it launched
        os.killpg(killed.pid, signal.SIGKILL)
    assert stopped.exists() and kept.exists(), killed.communicate()[1]
    before = json.loads(kept.read_text())

    stdout, stderr = _frontier(tmp_path, *args).communicate(timeout=240)
    assert f"kept from an earlier frontier ({before['ended']}): {kept}" in stdout, stderr
    report = json.loads((tmp_path / "frontier.json").read_text())
    first, second = report["contenders"]["fashion_keras"]["runs"]
    assert first == {**before, "kept": True}  # not run again: its times and scores would differ
    assert second["seed"] == 43 and second["result_s"] <= 30 + bench.CLOCK_GAP_S
    output = second["command"].split("--output ")[1].split()[0]
    metrics = json.loads((runs / output / "metrics.json").read_text())
    assert second["metrics"]["test_accuracy"] == metrics["test_accuracy"]
    assert output == f"{stopped}-2"  # not resumed: its time would not be launch to result
    assert json.loads((runs / "results" / "project-30s-seed43.json").read_text()) == second
