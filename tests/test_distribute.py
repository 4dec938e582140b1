"""MirroredStrategy over two logical CPU devices: the real tf.distribute path, without GPUs."""

import json
import os
import re
import socket
import subprocess
import sys
import time

import pytest

from fashion_keras import distribute

from conftest import CONFIGS, ROOT, epochs_logged, run_cli

pytestmark = pytest.mark.slow


# float32 and deterministic ops: with them a data-parallel run computes what one device
# computes, to the last bit here; in bfloat16 the replicas' partial sums round differently.
EXACT = ["training.precision=float32", "training.deterministic=true"]


def _train(run_dir, *sets):
    base = ["training.epochs=1", "data.train_limit=1000", "data.eval_limit=500", *EXACT]
    args = [a for s in [*base, *sets] for a in ("--set", s)]
    result = run_cli("train", "--config", CONFIGS / "baseline.yaml", *args, "--output", run_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    return result, json.loads((run_dir / "metrics.json").read_text())


def test_mirrored_on_two_cpu_devices_matches_single_device(tmp_path):
    _, single = _train(tmp_path / "single", "distribute.strategy=single")
    # 2 replicas x 64 = the single run's global batch of 128: same data order, same updates.
    result, mirrored = _train(
        tmp_path / "mirrored",
        "distribute.strategy=mirrored",
        "distribute.cpu_devices=2",
        "training.batch_size=64",
        "training.steps_per_execution=4",  # as `fast` asks for 10: Keras fails it over replicas
    )
    assert "MirroredStrategy with 2 replica(s); global batch 128" in result.stdout
    assert "steps_per_execution=1, not 4: Keras fails calls of several batches" in result.stdout
    assert mirrored["strategy"] == "MirroredStrategy" and mirrored["replicas"] == 2
    # 2 replicas x 64 is the computation one device does with 128: the same result.
    assert mirrored["test_accuracy"] == single["test_accuracy"]
    assert mirrored["test_loss"] == pytest.approx(single["test_loss"], rel=1e-6)


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _start_workers(run_dir, ports, epochs):
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    sets = [
        f"training.epochs={epochs}",
        "data.train_limit=1000",
        "data.eval_limit=500",
        "distribute.strategy=multi_worker",
        "training.batch_size=64",
        *EXACT,
    ]
    args = [a for s in sets for a in ("--set", s)]
    processes = []
    for index in range(len(ports)):
        env = {
            **os.environ,
            "TF_CONFIG": json.dumps(
                {"cluster": cluster, "task": {"type": "worker", "index": index}}
            ),
        }
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "fashion_keras.cli",
                    "train",
                    "--config",
                    CONFIGS / "baseline.yaml",
                    *args,
                    "--output",
                    run_dir,
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                cwd=ROOT,
                env=env,
            )
        )
    return processes


def _wait(processes, timeout):
    try:
        return [p.communicate(timeout=timeout)[0] for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.communicate()


@pytest.mark.long  # for its time: make test-long runs it, make test does not
def test_two_workers_train_as_one_job(tmp_path):
    run_dir = tmp_path / "run"
    processes = _start_workers(run_dir, _free_ports(2), epochs=1)
    outputs = _wait(processes, timeout=300)
    assert [p.returncode for p in processes] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    assert "MultiWorkerMirroredStrategy with 2 replica(s); global batch 128" in outputs[0]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["replicas"] == 2 and metrics["train_size"] == 1000
    # Two workers x 64 is the same data-parallel computation as one device at 128.
    _, single = _train(tmp_path / "single", "distribute.strategy=single")
    assert metrics["test_accuracy"] == single["test_accuracy"]
    assert metrics["test_loss"] == pytest.approx(single["test_loss"], rel=1e-6)
    # Fitted on all the validation images, not on this worker's share of them.
    assert metrics["temperature"] == pytest.approx(single["temperature"], rel=1e-4)
    for name in ("model.keras", "best.keras", "history.csv", "config.yaml"):
        assert (run_dir / name).is_file()
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(
        ["best.keras", "config.yaml", "history.csv", "logs", "metrics.json", "model.keras"]
    )  # the non-chief worker wrote nothing here


@pytest.mark.long  # about a minute: CI runs it with test-long
def test_killed_worker_then_restarted_job_resumes(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    processes = _start_workers(run_dir, _free_ports(2), epochs=3)
    # The second worker's private backup (where distribute.worker_dir puts it).
    with monkeypatch.context() as patch:
        patch.setenv("TF_CONFIG", json.dumps({"task": {"type": "worker", "index": 1}}))
        worker_backup = distribute.worker_dir(run_dir) / "backup"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (worker_backup / "state.json").exists():
        time.sleep(0.02)
    processes[1].kill()  # the second worker dies after epoch 1; the chief cannot go on alone
    _wait(processes, timeout=120)
    assert processes[0].returncode != 0 and not (run_dir / "metrics.json").exists()

    restarted = _start_workers(run_dir, _free_ports(2), epochs=3)
    outputs = _wait(restarted, timeout=300)
    assert [p.returncode for p in restarted] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    assert "Resuming after epoch" in outputs[0] and "Resuming after epoch" in outputs[1]
    # The restart trains only the epochs the killed job had not finished, each once.
    resumed = re.findall(r"^Resuming after epoch (\d+)", outputs[0], flags=re.MULTILINE)
    assert len(resumed) == 1 and 1 <= int(resumed[0]) < 3, outputs[0][-2000:]
    assert epochs_logged(outputs[0]) == list(range(int(resumed[0]) + 1, 4))
    assert json.loads((run_dir / "metrics.json").read_text())["epochs"] == 3
    history = (run_dir / "history.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in history[1:]] == ["1", "2", "3"]
    assert not worker_backup.parent.exists()  # the worker cleaned up after itself
