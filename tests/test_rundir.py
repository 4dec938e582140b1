"""The run directory is ours, and only ours: ownership, one writer, exact cleaning."""

import os
import subprocess
import sys

import pytest

from fashion_keras import files
from fashion_keras.rundir import (
    RunError,
    check_ownership,
    claim,
    remove_leftovers,
    tidy_finished,
)

from conftest import CONFIGS, ROOT, run_cli


def test_only_a_new_empty_or_own_directory_is_accepted(tmp_path):
    check_ownership(tmp_path / "new")  # absent
    check_ownership(tmp_path)  # empty
    (tmp_path / ".config.0123abcd.part.yaml").write_text("a killed run's temporary")
    check_ownership(tmp_path)  # only our temporaries: still empty
    (tmp_path / "notes.txt").write_text("someone's")
    with pytest.raises(RunError, match="not empty and holds no fashion_keras run"):
        check_ownership(tmp_path)
    (tmp_path / "config.yaml").write_text("name: ours\n")
    check_ownership(tmp_path)
    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(RunError, match="already holds a finished run"):
        check_ownership(tmp_path)
    with pytest.raises(RunError, match="is a file"):
        check_ownership(tmp_path / "notes.txt")


def test_only_the_exact_temporaries_we_write_are_removed(tmp_path):
    ours = [".model.0123abcd.part.keras", ".history.89abcdef.part.csv"]
    theirs = [
        ".draft.partial.txt",
        ".x.part",
        ".model.0123abcd.part.keras.bak",  # not a name we write
        ".notes.0123abcd.part.txt",  # nor this
        "model.part",
    ]
    for name in ours + theirs:
        (tmp_path / name).write_text("x")
    (tmp_path / "backup").mkdir()
    (tmp_path / "backup" / ".epoch-0001.0123abcd.part.weights.h5").write_text("x")
    (tmp_path / "backup" / ".state.0123abcd.part.json").write_text("x")
    (tmp_path / "notes").mkdir()  # below the run directory, not where we write
    (tmp_path / "notes" / ".model.0123abcd.part.keras").write_text("x")
    remove_leftovers(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(theirs + ["backup", "notes"])
    assert list((tmp_path / "backup").iterdir()) == []
    assert (tmp_path / "notes" / ".model.0123abcd.part.keras").exists()
    for name in ("state.json", "epoch-0001.weights.h5", "b"):
        assert files.target_of(files.temporary_name(tmp_path / name)) == name


def test_a_second_writer_is_refused_at_once(tmp_path):
    with claim(tmp_path / "run"):
        with pytest.raises(RunError, match="another process is writing"):
            with claim(tmp_path / "run"):
                pass
    with claim(tmp_path / "run"):  # released with the block
        pass


def test_a_killed_writer_leaves_no_stale_lock(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom fashion_keras.rundir import claim\n"
            "with claim(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)",
            str(tmp_path / "run"),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(RunError, match="another process is writing"):
        with claim(tmp_path / "run"):
            pass
    holder.kill()
    holder.wait()
    with claim(tmp_path / "run"):
        pass


def test_a_directory_claimed_and_left_empty_by_a_failure_is_removed(tmp_path):
    with pytest.raises(RuntimeError):
        with claim(tmp_path / "new"):
            raise RuntimeError("a check failed")
    assert not (tmp_path / "new").exists()
    (tmp_path / "mine").mkdir()
    with pytest.raises(RuntimeError):
        with claim(tmp_path / "mine"):
            raise RuntimeError("a check failed")
    assert (tmp_path / "mine").is_dir()  # the user's: kept


def test_a_finished_runs_leftover_backup_is_removed_and_nothing_else(tmp_path):
    # A foreign finished run (another tool's metrics.json, config.yaml and backup/): untouched.
    foreign = tmp_path / "foreign"
    (foreign / "backup").mkdir(parents=True)
    for name in ("metrics.json", "config.yaml", "backup/state.json", "backup/model.ckpt"):
        (foreign / name).write_text("{}")
    tidy_finished(foreign)
    assert (foreign / "backup" / "model.ckpt").exists()
    assert (foreign / "backup" / "state.json").exists()
    # Ours, killed between metrics.json and the backup's removal: only our files go.
    ours = tmp_path / "ours"
    (ours / "backup").mkdir(parents=True)
    (ours / "metrics.json").write_text("{}")
    state = '{"epochs": {"3": {"weights": "epoch-0003.weights.h5"}}}'
    (ours / "backup" / "state.json").write_text(state)
    (ours / "backup" / "epoch-0003.weights.h5").write_text("x")
    tidy_finished(ours)
    assert not (ours / "backup").exists() and (ours / "metrics.json").exists()


def _train(output, *extra):
    return run_cli("train", "--config", CONFIGS / "baseline.yaml", "--output", output, *extra)


@pytest.mark.slow
def test_a_foreign_directory_is_refused_and_left_as_it_was(tmp_path):
    # The reproduction of the data loss: a file named like a temporary, below the output.
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / ".draft.partial.txt").write_text("keep")
    result = _train(tmp_path, "--data-dir", tmp_path / "nonexistent")
    assert result.returncode == 2
    assert "not empty and holds no fashion_keras run" in result.stderr.splitlines()[-1]
    assert (tmp_path / "notes" / ".draft.partial.txt").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["notes", ".draft.partial.txt"][::-1]


@pytest.mark.slow
def test_a_failed_start_writes_nothing(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for output in (empty, tmp_path / "new"):
        result = _train(output, "--data-dir", tmp_path / "nonexistent")
        assert result.returncode == 2 and "nonexistent" in result.stderr.splitlines()[-1]
    assert list(empty.iterdir()) == [] and not (tmp_path / "new").exists()


@pytest.mark.slow
def test_a_second_command_on_the_same_output_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    with claim(run_dir):
        result = _train(run_dir, "--set", "training.epochs=1", "--set", "data.train_limit=100")
    assert result.returncode == 2
    assert "another process is writing" in result.stderr.splitlines()[-1]
    assert os.listdir(run_dir) == []


def test_a_copy_blames_a_missing_source_not_its_destination(tmp_path):
    source, copy = tmp_path / "backup.keras", tmp_path / "run" / "model.keras"
    with pytest.raises(FileNotFoundError) as raised:  # not a WriteError naming `copy`
        files.copy_file(source, copy)
    assert raised.value.filename == str(source) and not (tmp_path / "run").exists()
    source.write_bytes(b"weights")
    files.copy_file(source, copy)
    assert copy.read_bytes() == b"weights" and os.listdir(copy.parent) == ["model.keras"]


def test_a_run_without_its_config_or_model_says_which(tmp_path):
    from fashion_keras.config import dump_config, load_config
    from fashion_keras.rundir import load_run_model

    with pytest.raises(RunError, match=r"config.yaml not found; is .* a run directory\?"):
        load_run_model(tmp_path)
    (tmp_path / "config.yaml").write_text(dump_config(load_config("fast", ["training.members=2"])))
    with pytest.raises(RunError, match="best.keras not found; an ensemble saves no best.keras"):
        load_run_model(tmp_path, checkpoint="best.keras")
    with pytest.raises(RunError, match=r"model.keras not found; is .* a finished run\?"):
        load_run_model(tmp_path)


def test_a_backup_missing_a_file_it_names_is_refused_before_loading(tmp_path):
    from fashion_keras.rundir import restore_backup

    entry = {"weights": "epoch-0002.weights.h5", "random_state": "epoch-0002.random.npz"}
    entry["pieces"] = {"best_checkpoint": {"best": 0.3, "file": "best-0002.keras"}}
    files.write_json(tmp_path / "state.json", {"epochs": {"2": entry}})
    (tmp_path / "epoch-0002.random.npz").write_bytes(b"")
    # model None: the check comes before anything is loaded into it
    with pytest.raises(RunError) as raised:
        restore_backup(None, tmp_path, 2)
    assert str(raised.value) == (
        f"{tmp_path} is damaged: best-0002.keras, epoch-0002.weights.h5 (epoch 2) not found; "
        "train into a new --output"
    )
