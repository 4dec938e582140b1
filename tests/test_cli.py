import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pandas as pd
import pytest

from conftest import CONFIGS, SMOKE, run_cli


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--config", "nope.yaml"], "config file nope.yaml not found"),
        (["train", "--config", "basline"], "dropout, fast, fast_shifted, improved"),
        (
            ["train", "--config", CONFIGS / "baseline.yaml", "--set", "training.epochz=3"],
            "did you mean training.epochs?",
        ),
        (
            ["train", "--config", CONFIGS / "baseline.yaml", "--set", "training.batch_size=0"],
            "training.batch_size must be at least 1",
        ),
        (
            ["train", "--config", CONFIGS / "baseline.yaml", "--data-dir", "/nonexistent"],
            "/nonexistent (from --data-dir): not a directory",
        ),
        (["evaluate", "/nonexistent-run"], "/nonexistent-run: no such run directory"),
        (["data", "--data-dir", "/nonexistent"], "not a directory"),
    ],
)
def test_user_mistakes_are_one_line_and_exit_2(args, message, tmp_path):
    result = run_cli(*args, "--output", tmp_path / "run") if args[0] == "train" else run_cli(*args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [
        line for line in result.stderr.splitlines() if line.startswith("fashion-keras: error:")
    ]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "run" / "history.csv").exists()


def test_help_everywhere():
    for command in ([], ["train"], ["evaluate"], ["data"]):
        result = run_cli(*command, "--help")
        assert result.returncode == 0 and "usage: fashion-keras" in result.stdout


def test_help_data_and_config_checks_start_without_tensorflow():
    # TensorFlow takes seconds to import and prints start-up messages; only commands that
    # build or load a model should pay for it, and a config mistake should show at once.
    code = (
        "import sys; from fashion_keras import cli, config, data; "
        "cli.build_parser(); data.find_data_dir(None, download=False); "
        f"config.dump_config(config.load_config({str(CONFIGS / 'improved.yaml')!r})); "
        "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    typo = run_cli("train", "--config", CONFIGS / "baseline.yaml", "--set", "training.epoch=3")
    assert typo.returncode == 2
    [line] = typo.stderr.splitlines()  # the error alone, without TensorFlow's start-up lines
    assert "did you mean training.epochs?" in line


def test_data_check_verifies_the_real_files():
    result = run_cli("data", "--check", "--no-download")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("SHA-256 OK") == 4


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["baseline", pytest.param("dropout", marks=pytest.mark.long)])
def test_train_one_epoch_writes_a_complete_run_directory(variant, tmp_path):
    run_dir = tmp_path / variant
    sets = [arg for s in SMOKE for arg in ("--set", s)]
    started = time.time()
    result = run_cli("train", "--config", CONFIGS / f"{variant}.yaml", *sets, "--output", run_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ("model.keras", "best.keras", "history.csv", "metrics.json", "config.yaml"):
        assert (run_dir / name).is_file(), name
    assert any((run_dir / "logs").rglob("events.out.tfevents.*"))
    assert not (run_dir / "backup").exists()
    history = pd.read_csv(run_dir / "history.csv")
    assert history["epoch"].tolist() == [1]
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "epoch_time"} <= set(history.columns)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train_size"] == 1000 and metrics["test_size"] == 500
    # One epoch on 1,000 images: well above chance (0.1), nowhere near converged.
    assert 0.15 < metrics["test_accuracy"] <= 1 and metrics["best_epoch"] == 1
    # The command counts from process start: the TensorFlow import and the run itself.
    assert metrics["wall_time_s"] <= metrics["process_wall_time_s"] < time.time() - started
    for key in (
        "test_loss",
        "best_val_loss",
        "train_images_per_s",
        "tensorflow_version",
        "keras_version",
        "device",
        "strategy",
    ):
        assert key in metrics
    model = keras.saving.load_model(run_dir / "model.keras", safe_mode=True)
    assert model.count_params() == 356_234

    evaluated = run_cli("evaluate", run_dir)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert json.loads(evaluated.stdout)["test_accuracy"] == pytest.approx(
        metrics["test_accuracy"], abs=1e-6
    )

    again = run_cli("train", "--config", CONFIGS / f"{variant}.yaml", *sets, "--output", run_dir)
    assert again.returncode == 2 and "already holds a finished run" in again.stderr


def test_unwritable_output_is_reported_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = run_cli("train", "--config", CONFIGS / "baseline.yaml", "--output", blocker / "run")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "cannot create the run directory" in result.stderr, result.stderr[-500:]


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MB tmpfs: room for config and history, not for a 4 MB model."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True
    )
    if made.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.slow
def test_full_disk_during_training_is_one_clear_error(tiny_disk):
    run_dir = tiny_disk / "run"
    sets = [arg for s in SMOKE for arg in ("--set", s)]
    result = run_cli("train", "--config", CONFIGS / "baseline.yaml", *sets, "--output", run_dir)
    assert result.returncode == 2, result.stderr[-1000:]
    errors = [line for line in result.stderr.splitlines() if "fashion-keras: error:" in line]
    assert len(errors) == 1 and "No space left on device while writing" in errors[0], errors
    assert not list(run_dir.rglob("*.part*"))  # nothing half-written left behind
    assert not (run_dir / "best.keras").exists() and not (run_dir / "metrics.json").exists()


def test_version_and_presets():
    from fashion_keras import __version__

    version = run_cli("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"fashion-keras {__version__}"
    presets = run_cli("presets")
    assert presets.returncode == 0
    names = [line.split()[0] for line in presets.stdout.splitlines()]
    assert names == ["baseline", "dropout", "fast", "fast_shifted", "improved"]
    assert all(len(line.split()) > 4 for line in presets.stdout.splitlines())  # a description


@pytest.mark.parametrize("top", ["0", "-1", "11"])
def test_predict_top_out_of_range_is_one_line(top, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((28, 28), np.uint8))
    result = run_cli("predict", "--model", tmp_path / "m.keras", "--top", top, tmp_path / "x.npy")
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert f"top must be between 1 and 10 (classes listed per image). Received: top={top}" in line


@pytest.mark.parametrize(
    "args, message",
    [
        (["report", "RUN", "--mc-samples", "0"], "expected a whole number >= 1, got '0'"),
        (
            ["predict", "--model", "m.keras", "x.npy", "--mc-samples", "-1"],
            "expected a whole number >= 0, got '-1'",
        ),
    ],
)
def test_mc_samples_are_checked_before_anything_runs(args, message):
    result = run_cli(*args)
    assert result.returncode == 2 and f"argument --mc-samples: {message}" in result.stderr


def test_unexpected_failures_are_not_called_user_mistakes(monkeypatch, capsys):
    from fashion_keras import cli, data

    def broken(*args, **kwargs):
        raise ValueError("a bug deep inside")

    monkeypatch.delenv("FASHION_KERAS_DEBUG", raising=False)
    for name, value in {"MPLBACKEND": "Agg", "TF_CPP_MIN_LOG_LEVEL": "2"}.items():
        monkeypatch.setenv(name, os.environ.get(name, value))  # main() sets them; undo after
    monkeypatch.setattr(signal, "signal", lambda *args: None)  # and leave pytest's SIGTERM
    monkeypatch.setattr(data, "find_data_dir", broken)
    assert cli.main(["data"]) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("fashion-keras: unexpected error: ValueError: a bug deep inside")
    assert "FASHION_KERAS_DEBUG=1" in line

    def mistake(*args, **kwargs):
        raise data.DataError("/nowhere: not a directory")

    monkeypatch.setattr(data, "find_data_dir", mistake)
    assert cli.main(["data"]) == 2
    assert capsys.readouterr().err == "fashion-keras: error: /nowhere: not a directory\n"
    monkeypatch.setenv("FASHION_KERAS_DEBUG", "1")
    monkeypatch.setattr(data, "find_data_dir", broken)
    with pytest.raises(ValueError, match="a bug deep inside"):
        cli.main(["data"])


@pytest.mark.long  # for its time: make test-long runs it, make test does not
@pytest.mark.slow
def test_a_leftover_tf_config_matters_only_for_multi_worker(tmp_path):
    # Worker 1 of a two-worker cluster: a chief-less job's non-chief.
    tf_config = json.dumps(
        {
            "cluster": {"worker": ["localhost:1", "localhost:2"]},
            "task": {"type": "worker", "index": 1},
        }
    )
    sets = [arg for s in SMOKE for arg in ("--set", s)]
    unnamed = run_cli(
        "train", "--config", "baseline", *sets, env={"TF_CONFIG": tf_config}, cwd=tmp_path
    )
    assert unnamed.returncode == 0, unnamed.stderr[-2000:]
    assert len(list((tmp_path / "runs").glob("baseline-*/metrics.json"))) == 1
    named = run_cli(
        "train", "--config", "baseline", *sets, "--set", "distribute.strategy=single",
        "--output", tmp_path / "named", env={"TF_CONFIG": tf_config},
    )  # fmt: skip
    assert named.returncode == 0, named.stderr[-2000:]
    assert (tmp_path / "named" / "metrics.json").is_file()


@pytest.mark.long  # for its time: make test-long runs it, make test does not
@pytest.mark.slow
def test_data_dir_is_a_plain_path_and_not_part_of_the_run(tmp_path):
    from fashion_keras import data

    from test_resume import kill_while_writing

    real, _ = data.find_data_dir(download=False)
    for name in ("dir #1", "yes"):  # YAML would read these as a comment and as true
        (tmp_path / name).mkdir()
        for spec in data.FILES.values():
            (tmp_path / name / spec.filename).symlink_to(real / spec.filename)
    sets = [arg for s in [*SMOKE, "training.epochs=2"] for arg in ("--set", s)]

    def args(data_dir):
        return ["train", "--config", "baseline", *sets, "--output", tmp_path / "run",
                "--data-dir", tmp_path / data_dir]  # fmt: skip

    kill_while_writing(tmp_path / "run", "state.json", 2, [str(a) for a in args("dir #1")])
    assert "data_dir" not in (tmp_path / "run" / "config.yaml").read_text()
    moved = run_cli(*args("yes"))  # the data moved: the run still resumes
    assert moved.returncode == 0, moved.stderr[-2000:]
    assert "Resuming after epoch 1" in moved.stdout
