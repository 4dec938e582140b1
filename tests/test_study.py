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
    # p = 0.0494 (ttest_rel), one comparison: Holm leaves it as it is.
    assert (
        "(+5.00 ± 4.97 points, more than the seeds' noise: p = 0.049 after Holm's correction "
        "for 1 comparison)"
    ) in words[0]
    assert "at x1 the test loss is 0.250 against 0.300" in words[0]
    assert "the validation loss rose again in 3 of 3 runs" in words[0]
    assert "(+1.00 ± 4.97 points, within the seeds' noise: p = 0.478" in words[1]
    # Test loss 0.30 -> 0.25 (a 17% cut) with 500 images, 0.15 -> 0.14 (7%) with 5,000.
    assert words[2] == (
        "Across 500, 5,000 images, the strength with the best test accuracy (x1, x1) gains "
        "+5.00, +1.00 points of it and cuts the test loss by 17%, 7%: a cut larger the less "
        "data there is."
    )
    dropout_only = table[table["strength"] > 0]
    words = study.conclusions(dropout_only, study.aggregate(dropout_only))
    assert words == [
        "With 500 training images, dropout x1 did best (no run without dropout).",
        "With 5,000 training images, dropout x1 did best (no run without dropout).",
    ]


def _two_strengths():
    """x1 has the best accuracy, x2 the lowest loss; x1's raw p is 0.032, x2's 0.295."""
    rows = []
    none = (0.70, 0.69, 0.71, 0.70)
    gains = {1.0: (0.012, 0.020, 0.004, 0.016), 2.0: (0.010, -0.004, 0.008, 0.002)}
    losses = {0.0: 0.40, 1.0: 0.34, 2.0: 0.30}
    for size in (1000, 5000):
        for seed, base in enumerate(none, 1):
            for strength, loss in losses.items():
                gain = gains[strength][seed - 1] if strength else 0.0
                rows.append(
                    {
                        "strength": strength,
                        "train_size": size,
                        "seed": seed,
                        "test_accuracy": base + gain,
                        "test_loss": loss,
                        "ece": 0.05,
                        "overfits": strength == 0,
                    }  # fmt: skip
                )
    return pd.DataFrame(rows)


def test_each_sentence_speaks_of_one_strength_and_corrects_for_the_choice():
    from scipy import stats

    table = _two_strengths()
    words = study.conclusions(table, study.aggregate(table))
    assert words[0].startswith("With 1,000 training images, dropout x1 did best")
    # x1's loss (0.34) beside x1's accuracy, never x2's lower one (0.30).
    assert "at x1 the test loss is 0.340 against 0.400" in words[0]
    assert "0.300" not in words[0]
    # Best of two on the test set: its raw p (0.032) is below 0.05, Holm's (x2) is not.
    pairs = table[table["train_size"] == 1000].pivot_table(
        index="seed", columns="strength", values="test_accuracy"
    )
    p = stats.ttest_rel(pairs[1.0], pairs[0.0]).pvalue
    assert 0.025 < p < 0.05
    assert f"within the seeds' noise: p = {2 * p:.3f} after Holm's correction for 2" in words[0]
    # The trend quotes x1's loss cut (15%), not the lowest loss's (25%).
    assert "(x1, x1) gains +1.30, +1.30 points of it and cuts the test loss by 15%, 15%" in words[2]


def test_holm_corrects_p_values_step_down():
    from fashion_keras.stats import holm

    # Sorted 0.01, 0.03, 0.04, 0.20 times 4, 3, 2, 1: 0.04, 0.09, 0.08 -> 0.09 (monotone), 0.20.
    assert holm([0.01, 0.04, 0.03, 0.20]) == [0.04, 0.09, 0.09, 0.2]
    assert holm([0.6, 0.5]) == [1.0, 1.0]


def test_cells_scale_the_dropout_variants_rates():
    cell = study.Cell(strength=1.5, train_size=5000, seed=2)
    config = study.cell_config(cell, study.DEFAULT)
    assert config.model["dropout_rates"] == [0.375, 0.375, 0.6, 0.45]
    assert config.data.train_limit == 5000 and config.training.epochs == 80 and config.seed == 2
    full = study.cell_config(study.Cell(0.0, 55000, 1), study.DEFAULT)
    assert full.data.train_limit is None and full.model["dropout_rates"] == [0.0] * 4
    assert len(study.cells(study.DEFAULT)) == 60


@pytest.mark.long
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
