import json
import re
import shutil
import subprocess

import matplotlib.figure
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from fashion_keras import build_model, compare, metrics, plots, report, uncertainty
from fashion_keras.config import dump_config, load_config
from fashion_keras.errors import UserError
from fashion_keras.shift import SHIFTS

from conftest import CONFIGS, SMOKE, run_cli

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _history(val_losses):
    n = len(val_losses)
    return pd.DataFrame(
        {
            "epoch": range(1, n + 1),
            "loss": np.linspace(0.6, 0.05, n),
            "val_loss": val_losses,
            "accuracy": np.linspace(0.8, 0.99, n),
            "val_accuracy": np.full(n, 0.9),
        }
    )


def test_overfitting_verdicts():
    assert compare.overfitting_verdict(_history([0.5, 0.3, 0.25, 0.3, 0.4])).startswith("Overfits")
    assert compare.overfitting_verdict(_history([0.5, 0.3, 0.25, 0.24, 0.23])).startswith(
        "No clear"
    )


def test_expected_calibration_error_known_values():
    y = np.zeros(100, int)
    perfect = np.tile([1.0] + [0.0] * 9, (100, 1))
    assert metrics.expected_calibration_error(perfect, y) == pytest.approx(0.0)
    # Always 90% confident, right half the time: ECE is 0.4.
    probs = np.tile([0.9, 0.1] + [0.0] * 8, (100, 1))
    y_half = np.array([0, 1] * 50)
    assert metrics.expected_calibration_error(probs, y_half) == pytest.approx(0.4)


def test_curves_mark_the_test_result_at_the_epoch_it_was_measured():
    metrics = {"test_loss": 0.3, "test_accuracy": 0.9, "evaluated_epoch": 2}
    fig = plots.plot_curves(_history([0.5, 0.3, 0.4, 0.45]), metrics)
    for ax in fig.axes:
        [star] = [line for line in ax.lines if line.get_marker() == "*"]
        assert list(star.get_xdata()) == [2]
        assert star.get_label().endswith("(weights of epoch 2)")


def test_the_run_summary_reads_as_a_summary():
    metrics = {
        "test_accuracy": 0.94661, "test_loss": 0.16031, "evaluated_epoch": 40, "epochs": 46,
        "best_epoch": 40, "best_val_loss": 0.14119, "fit_time_s": 1549.4,
        "seconds_per_epoch": 33.6, "train_images_per_s": 1632.9, "process_wall_time_s": 1621.0,
        "device": "CPU: Xeon", "precision": "mixed_bfloat16", "strategy": "default",
        "train_size": 55000, "val_size": 5000, "test_size": 10000,
        "plan": {"time_budget_s": 1800, "epochs": 46, "seconds_per_epoch": 35.1},
    }  # fmt: skip
    rows = report.run_summary(metrics)["value"]
    assert rows["Test accuracy"] == "0.9466" and rows["Test loss"] == "0.1603"
    assert rows["Weights tested"] == "epoch 40 of 46 (the lowest validation loss)"
    assert rows["Training"].startswith("25 min 49 s (46 epochs, 33.6 s each, 1,633 images/s)")
    assert rows["From start to test result"] == "27 min 1 s"
    assert rows["Time budget"] == "30 min 0 s: 46 epochs planned at 35.1 s each"
    table = report.metrics_table(metrics)["value"]
    assert table["test_loss"] == "0.1603" and table["train_size"] == "55000"
    assert report.duration(41.26) == "41.3 s" and report.duration(7260) == "2 h 1 min"


def test_classification_table_counts_support_in_images():
    table = report.classification_table(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 2]))
    assert table["support"].dtype.kind == "i"
    assert table.loc["T-shirt/top", "support"] == 2 and table.loc["accuracy (all)", "support"] == 4


def test_plot_functions_return_figures_and_save_only_with_a_path(tmp_path):
    fig = plots.plot_curves(_history([0.5, 0.3, 0.4]), {"test_loss": 0.4, "test_accuracy": 0.9})
    assert isinstance(fig, matplotlib.figure.Figure) and not list(tmp_path.iterdir())
    plots.plot_curves(_history([0.5, 0.3, 0.4]), path=tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_seed_statistics_paired_interval_known_answer():
    # Differences 0.01, 0.03, 0.02, 0.04: mean 0.025, sd 0.0129099, se 0.0064550, and the
    # t quantile for 3 degrees of freedom 3.182446 (any t table): 0.025 +- 0.0205426.
    summary = pd.DataFrame(
        {
            "variant": ["baseline"] * 4 + ["dropout"] * 4,
            "seed": [1, 2, 3, 4] * 2,
            "test_accuracy": [0.90, 0.91, 0.92, 0.915, 0.91, 0.94, 0.94, 0.955],
            "test_loss": [0.30, 0.31, 0.29, 0.30, 0.25, 0.27, 0.26, 0.28],
        }
    )
    per_variant, diff = compare.seed_statistics(summary)
    assert per_variant.loc["dropout", ("test_accuracy", "mean")] == pytest.approx(0.93625)
    row = diff.set_index("metric").loc["test_accuracy"]
    assert row["difference"] == "dropout - baseline" and row["method"] == "paired t (by seed)"
    assert row["mean"] == pytest.approx(0.025)
    assert row["ci95_low"] == pytest.approx(0.0044574, abs=1e-7)
    assert row["ci95_high"] == pytest.approx(0.0455426, abs=1e-7)


def test_seed_statistics_welch_interval_known_answer():
    # Variances 1e-4 (3 runs) and 2.5e-4 (5 runs): se^2 = 1e-4/3 + 2.5e-4/5 = 8.3333e-5,
    # Welch-Satterthwaite dof 5.88235, t quantile 2.458824: 0.01 +- 0.0224459.
    summary = pd.DataFrame(
        {
            "variant": ["dropout"] * 3 + ["baseline"] * 5,
            "seed": [1, 2, 3, 1, 2, 3, 4, 5],
            "test_accuracy": [0.92, 0.93, 0.94, 0.90, 0.91, 0.92, 0.93, 0.94],
            "test_loss": [0.30, 0.32, 0.31, 0.33, 0.30, 0.29, 0.31, 0.32],
        }
    )
    _, diff = compare.seed_statistics(summary)
    row = diff.set_index("metric").loc["test_accuracy"]
    assert row["method"] == "Welch t" and row["mean"] == pytest.approx(0.01)
    assert row["ci95_low"] == pytest.approx(-0.0124459, abs=1e-7)
    assert row["ci95_high"] == pytest.approx(0.0324459, abs=1e-7)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    sets = [a for s in [*SMOKE, "training.epochs=2"] for a in ("--set", s)]
    for variant in ("baseline", "dropout"):
        result = run_cli(
            "train", "--config", CONFIGS / f"{variant}.yaml", *sets, "--output", root / variant
        )
        assert result.returncode == 0, result.stderr[-2000:]
    return root


def _open_in_chromium(page, screenshot):
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--virtual-time-budget=5000",
        "--allow-file-access-from-files",
    ]
    dom = subprocess.run(
        [CHROMIUM, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120
    )
    subprocess.run(
        [CHROMIUM, *flags, "--window-size=1200,2400", f"--screenshot={screenshot}", page.as_uri()],
        capture_output=True,
        timeout=120,
    )
    return dom.stdout


@pytest.mark.slow
@pytest.mark.long  # 1.5 min: make test-long runs it (CI does), make test does not
def test_report_and_comparison_pages(runs, tmp_path):
    for variant in ("baseline", "dropout"):
        result = run_cli("report", runs / variant, "--mc-samples", "5")
        assert result.returncode == 0, result.stderr[-2000:]
    out = runs / "baseline" / "report"
    for name in (
        "curves.png",
        "correct.png",
        "incorrect.png",
        "confusion_matrix.png",
        "reliability.png",
        "entropy.png",
        "coverage.png",
        "ood.png",
        "shift.png",
        "classification_report.txt",
        "classification_report.csv",
        "per_class_accuracy.csv",
        "index.html",
    ):
        assert (out / name).is_file(), name
    table = pd.read_csv(out / "classification_report.csv", index_col=0)
    assert {"precision", "recall", "f1-score", "support"} <= set(table.columns)
    assert "Ankle boot" in table.index and table.loc["Ankle boot", "support"] == 50
    summary = json.loads((out / "summary.json").read_text())
    assert 0 <= summary["expected_calibration_error"] <= 1
    # The baseline has no dropout: its uncertainty is its softmax's; the dropout run has both.
    assert list(summary["uncertainty"]) == ["deterministic"]
    assert list(summary["shift"]) == ["deterministic"]
    assert len(summary["shift"]["deterministic"]) == sum(map(len, SHIFTS.values()))
    dropout = json.loads((runs / "dropout" / "report" / "uncertainty.json").read_text())
    assert [row["method"] for row in dropout["metrics"]] == ["deterministic", "mc_dropout"]
    assert dropout["samples"] == 5
    assert {row["dataset"] for row in dropout["ood"]} == {"digits", "inverted", "rotated", "noise"}
    page = (out / "index.html").read_text()
    headings = re.findall(r"<h2>(.*?)</h2>", page)
    assert headings[0] == "Summary" and headings[-1] == "All metrics"
    assert "How sure the model is" in headings and "Out-of-distribution inputs" in headings
    assert "Under growing shift" in headings and "one ordinary pass (no dropout)" in page
    dropout_page = (runs / "dropout" / "report" / "index.html").read_text()
    assert "MC dropout with 5 passes" in dropout_page
    assert "support" in page and ">50<" in page  # support as whole numbers

    saved = (runs / "dropout" / "report" / "uncertainty.json").stat().st_mtime_ns
    result = run_cli(
        "compare", runs / "baseline", runs / "dropout", "--output", runs / "cmp", "--mc-samples", 5
    )
    assert result.returncode == 0, result.stderr[-2000:]
    # The reports' Monte Carlo passes are reused, not recomputed, when the count matches.
    assert (runs / "dropout" / "report" / "uncertainty.json").stat().st_mtime_ns == saved
    rows = pd.read_csv(runs / "cmp" / "summary.csv")
    assert (
        rows["variant"].tolist() == ["baseline", "dropout"] and rows["verdict"].str.len().min() > 10
    )
    side_by_side = pd.read_csv(runs / "cmp" / "uncertainty.csv")
    assert list(zip(side_by_side["run"], side_by_side["method"], strict=True)) == [
        ("baseline", "deterministic"), ("dropout", "deterministic"), ("dropout", "mc_dropout")
    ]  # fmt: skip
    comparison = (runs / "cmp" / "index.html").read_text()
    assert re.findall(r"<h2>(.*?)</h2>", comparison)[0] == "Summary"
    assert "Mean test accuracy" in comparison and "How sure each model is" in comparison
    assert "the mean of 5 passes" in comparison

    if CHROMIUM is None:
        pytest.skip("chromium is not installed (make test-long installs it where apt is available)")
    for page, tables, min_images in (
        (out / "index.html", 6, 9),
        (runs / "cmp" / "index.html", 4, 3),  # one run per variant: no difference table
    ):
        dom = _open_in_chromium(page, tmp_path / f"{page.parent.name}.png")
        images = dom.count("<img ")
        assert images >= min_images and f'data-images="{images}/{images}"' in dom, dom[-500:]
        assert dom.count("<table") >= tables
        assert (tmp_path / f"{page.parent.name}.png").stat().st_size > 10_000


def test_compare_needs_two_runs(tmp_path):
    result = run_cli("compare", tmp_path)
    assert result.returncode == 2 and "at least two run directories" in result.stderr


FINISHED = {
    "test_accuracy": 0.1, "test_loss": 2.3, "epochs": 2, "best_epoch": 2, "best_val_loss": 2.3,
    "fit_time_s": 1.0, "seconds_per_epoch": 0.5, "train_images_per_s": 80.0,
    "device": "CPU", "precision": "float32", "strategy": "default",
    "train_size": 40, "val_size": 20, "test_size": 20,
}  # fmt: skip


@pytest.fixture
def finished_runs(tmp_path, small_dataset):
    """A finished run directory of each variant on the tiny data set (untrained models:
    these tests are about what reading a run does, not about what it learned)."""
    for variant in ("baseline", "dropout"):
        run_dir = tmp_path / "runs" / variant
        run_dir.mkdir(parents=True)
        config = load_config(variant, ["data.validation_size=20", "training.epochs=2"])
        (run_dir / "config.yaml").write_text(dump_config(config))
        _history([2.4, 2.3]).to_csv(run_dir / "history.csv", index=False)
        (run_dir / "metrics.json").write_text(json.dumps(FINISHED))
        build_model(variant).save(run_dir / "model.keras")
    return tmp_path / "runs"


def _snapshot(*directories):
    """Every path under `directories` (themselves included) with its mtime and size."""
    return {
        path: (path.stat().st_mtime_ns, path.stat().st_size)
        for directory in directories
        for path in [directory, *directory.rglob("*")]
    }


def test_report_predicts_the_test_set_once_and_closes_only_its_figures(
    finished_runs, small_dataset, monkeypatch
):
    passes = []
    original = uncertainty.deterministic_predict
    monkeypatch.setattr(
        uncertainty,
        "deterministic_predict",
        lambda model, x, *a, **k: passes.append(len(x)) or original(model, x, *a, **k),
    )
    open_before = set(plt.get_fignums())
    mine = plt.figure()  # a notebook's own figure
    try:
        report.write_report(finished_runs / "dropout", data_dir=small_dataset, mc_samples=2)
        assert set(plt.get_fignums()) == open_before | {mine.number}
    finally:
        plt.close(mine)
    # One deterministic pass: the 20 test images and the out-of-distribution sets together;
    # then one for the whole shift series: every point's copy of the (at most 500) images.
    assert passes[0] > 20 and passes[1:] == [20 * sum(map(len, SHIFTS.values()))]
    out = finished_runs / "dropout" / "report"
    saved = json.loads((out / "uncertainty.json").read_text())
    assert saved["samples"] == 2
    deterministic = {row["method"]: row for row in saved["metrics"]}["deterministic"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["expected_calibration_error"] == deterministic["expected_calibration_error"]
    # The shift series of the dropout model: one ordinary pass and MC dropout with 2 passes.
    assert list(summary["shift"]) == ["deterministic", "mc_dropout"]
    assert "MC dropout with 2 passes" in (out / "index.html").read_text()


def test_a_report_that_cannot_be_written_is_one_line(finished_runs, small_dataset):
    (finished_runs / "dropout" / "report").write_text("a file of the user's, not a folder")
    with pytest.raises(UserError, match=r"dropout/report is a file, not the report's folder"):
        report.write_report(finished_runs / "dropout", data_dir=small_dataset, mc_samples=2)


def test_compare_checks_everything_before_it_writes(finished_runs, tmp_path):
    runs = [finished_runs / "baseline", finished_runs / "dropout"]
    out = tmp_path / "cmp"
    (tmp_path / "a file").write_text("")
    with pytest.raises(UserError, match="is a file, not a folder"):
        compare.write_comparison(runs, tmp_path / "a file", mc_samples=2)
    with pytest.raises(UserError, match="not a directory"):  # the data's
        compare.write_comparison(runs, out, mc_samples=2, data_dir=tmp_path / "nowhere")
    for run in runs:
        (run / "metrics.json").unlink()
    with pytest.raises(UserError, match="none of these runs is finished"):
        compare.write_comparison(runs, out, mc_samples=2)
    assert not out.exists()


def test_compare_writes_nothing_into_the_runs_it_reads(finished_runs, small_dataset, tmp_path):
    runs = [finished_runs / "baseline", finished_runs / "dropout"]
    # A report of other passes than asked for: not reused, and not replaced either.
    (runs[1] / "report").mkdir()
    (runs[1] / "report" / "uncertainty.json").write_text('{"samples": 99}')
    before = _snapshot(*runs)
    open_before = set(plt.get_fignums())
    mine = plt.figure()
    try:
        page = compare.write_comparison(
            runs, tmp_path / "cmp", mc_samples=2, data_dir=small_dataset
        )
        assert set(plt.get_fignums()) == open_before | {mine.number}
    finally:
        plt.close(mine)
    assert _snapshot(*runs) == before
    assert "the mean of 2 passes" in page.read_text()
    side_by_side = pd.read_csv(tmp_path / "cmp" / "uncertainty.csv")
    assert list(zip(side_by_side["run"], side_by_side["method"], strict=True)) == [
        ("baseline", "deterministic"), ("dropout", "deterministic"), ("dropout", "mc_dropout")
    ]  # fmt: skip
