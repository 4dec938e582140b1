"""The dropout study: its statistics on known numbers, and a tiny grid end to end."""

import json
import re

import pandas as pd
import pytest

from fashion_keras import study

from conftest import run_cli
from test_resume import kill_while_writing


def _table():
    rows = []
    for size, base, gain in ((500, 0.70, 0.05), (5000, 0.85, 0.01)):
        for seed, noise in zip((1, 2, 3), (-0.02, 0.0, 0.02), strict=True):
            for strength in (0.0, 1.0):
                accuracy = base + noise * (1 + strength) + gain * strength
                rows.append(
                    {
                        "strength": strength,
                        "train_size": size,
                        "seed": seed,
                        "test_accuracy": accuracy,
                        "test_loss": 1 - accuracy,
                        "ece": 0.05,
                        "overfits": strength == 0,
                    }  # fmt: skip
                )
    return pd.DataFrame(rows)


def test_aggregate_gives_means_and_t_intervals_over_seeds():
    summary = study.aggregate(_table()).set_index(["train_size", "strength"])
    row = summary.loc[(500, 0.0)]
    # 0.68, 0.70, 0.72: mean 0.70, sd 0.02, t(0.975, 2) = 4.302653: 0.02 * 4.302653 / sqrt(3).
    assert row["test_accuracy"] == pytest.approx(0.70)
    assert row["test_accuracy_ci95"] == pytest.approx(0.0496827, abs=1e-6)
    assert row["runs"] == 3


def test_conclusions_are_computed_from_the_numbers():
    table = _table()
    words = study.conclusions(table, study.aggregate(table))
    assert len(words) == 3
    assert words[0].startswith(
        "With 500 training images, dropout x1 did best: test accuracy 0.7500"
    )
    # Paired gains 0.03, 0.05, 0.07: mean 0.05, half-width 0.02 * 4.302653 / sqrt(3) = 0.0497.
    assert "(+5.00 ± 4.97 points, more than the seeds' noise)" in words[0]
    assert "the validation loss rose again in 3 of 3 runs" in words[0]
    assert "(+1.00 ± 4.97 points, within the seeds' noise)" in words[1]
    # Test loss 0.30 -> 0.25 (a 17% cut) with 500 images, 0.15 -> 0.14 (7%) with 5,000.
    assert words[2] == (
        "Across 500, 5,000 images: the best strength gains +5.00, +1.00 points of test "
        "accuracy and cuts the test loss by 17%, 7%: a cut larger the less data there is."
    )
    dropout_only = table[table["strength"] > 0]
    words = study.conclusions(dropout_only, study.aggregate(dropout_only))
    assert words == [
        "With 500 training images, dropout x1 did best (no run without dropout).",
        "With 5,000 training images, dropout x1 did best (no run without dropout).",
    ]


def test_cells_scale_the_dropout_variants_rates():
    cell = study.Cell(strength=1.5, train_size=5000, seed=2)
    config = study.cell_config(cell, study.DEFAULT)
    assert config.model["dropout_rates"] == [0.375, 0.375, 0.6, 0.45]
    assert config.data.train_limit == 5000 and config.training.epochs == 80 and config.seed == 2
    full = study.cell_config(study.Cell(0.0, 55000, 1), study.DEFAULT)
    assert full.data.train_limit is None and full.model["dropout_rates"] == [0.0] * 4
    assert len(study.cells(study.DEFAULT)) == 60


@pytest.mark.slow
def test_a_stopped_study_continues_and_writes_its_page(tmp_path):
    output = tmp_path / "study"
    args = ["study", "--quick", "--output", str(output), "--docs", str(tmp_path / "docs")]
    # Killed while its third run writes metrics.json: two runs done, the third trained.
    kill_while_writing(output / "size500-strength0-seed2", "metrics.json", 3, args)
    again = run_cli(*args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "2 of 8 runs done" in again.stdout
    assert re.search(r"Resuming after epoch 3 from .*size500-strength0-seed2", again.stdout)
    assert again.stdout.count("...") == 6  # the six runs left, no more
    summary = json.loads((output / "summary.json").read_text())
    assert len(summary["runs"]) == 8 and len(summary["summary"]) == 4
    assert len(summary["conclusions"]) == 3
    assert summary == json.loads((tmp_path / "docs" / "summary.json").read_text())
    for name in ("index.html", "study.png", "runs.csv"):
        assert (output / name).stat().st_size > 0
    done = run_cli(*args)
    assert "8 of 8 runs done" in done.stdout and "..." not in done.stdout
