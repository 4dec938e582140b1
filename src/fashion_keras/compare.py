"""Baseline versus dropout: overlaid curves, generalization gap, verdicts, seed statistics,
and how sure each run's model is, side by side."""

import html
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from fashion_keras import files, plots
from fashion_keras.errors import UserError
from fashion_keras.pages import SHORT_NAMES, image, table_html, write_page
from fashion_keras.report import run_uncertainty, uncertainty_record
from fashion_keras.rundir import load_run, load_run_model, read_json
from fashion_keras.stats import difference_interval


def overfitting_verdict(history):
    """A plain-language verdict on overfitting from a run's per-epoch history."""
    best = int(history.loc[history["val_loss"].idxmin(), "epoch"])
    last = history.iloc[-1]
    low = history["val_loss"].min()
    rise = (last["val_loss"] - low) / low
    if best < last["epoch"] and rise > 0.10 and last["loss"] < history["loss"].iloc[best - 1]:
        return (
            f"Overfits: validation loss bottomed at epoch {best} and rose {rise:.0%} by epoch "
            f"{int(last['epoch'])} while training loss kept falling."
        )
    if best < last["epoch"] and rise > 0.02:
        return f"Mild overfitting: validation loss is {rise:.0%} above its minimum (epoch {best})."
    return f"No clear overfitting: validation loss at or near its minimum (epoch {best})."


def summarize(runs):
    """One row per run: final and best metrics, generalization gap and the verdict."""
    rows = []
    for run in runs:
        h, m = run["history"], run["metrics"]
        config = yaml.safe_load(run["config"])
        rows.append(
            {
                "run": run["run_dir"].name,
                "variant": config["model"]["variant"],
                "seed": config["seed"],
                "epochs": int(h["epoch"].iloc[-1]),
                "best_epoch": int(h.loc[h["val_loss"].idxmin(), "epoch"]),
                "min_val_loss": h["val_loss"].min(),
                "final_train_loss": h["loss"].iloc[-1],
                "final_val_loss": h["val_loss"].iloc[-1],
                "final_gap": h["val_loss"].iloc[-1] - h["loss"].iloc[-1],
                "final_val_accuracy": h["val_accuracy"].iloc[-1],
                "test_accuracy": m.get("test_accuracy", np.nan),
                "test_loss": m.get("test_loss", np.nan),
                "verdict": overfitting_verdict(h),
            }
        )
    return pd.DataFrame(rows)


def seed_statistics(summary):
    """Mean ± std per variant, and the difference between two variants with a 95% CI.

    Returns:
        `(per_variant, difference)`; `difference` is None unless there are exactly two
        variants with at least two runs each. Runs are paired by seed when both variants
        have the same seeds (a paired t interval), else Welch's interval is used.
    """
    per_variant = summary.groupby("variant")[["test_accuracy", "test_loss"]].agg(
        ["mean", "std", "count"]
    )
    groups = {v: g.sort_values("seed") for v, g in summary.groupby("variant")}
    if len(groups) != 2 or min(len(g) for g in groups.values()) < 2:
        return per_variant, None
    (name_a, a), (name_b, b) = sorted(groups.items(), key=lambda kv: kv[0] != "dropout")
    paired = a["seed"].tolist() == b["seed"].tolist()
    rows = []
    for metric in ("test_accuracy", "test_loss"):
        mean, low, high = difference_interval(a[metric], b[metric], paired)
        rows.append(
            {
                "metric": metric,
                "difference": f"{name_a} - {name_b}",
                "mean": mean,
                "ci95_low": low,
                "ci95_high": high,
                "method": "paired t (by seed)" if paired else "Welch t",
            }
        )
    return per_variant, pd.DataFrame(rows)


def load_uncertainty(run_dir, mc_samples=30, data_dir=None):
    """A finished run's uncertainty tables: its report's `RUN_DIR/report/uncertainty.json`
    when that used the same passes, else computed here. Nothing is written into `run_dir`
    (it may be someone else's, or read-only)."""
    saved = read_json(Path(run_dir) / "report" / "uncertainty.json")
    if saved is not None and saved["samples"] in (0, mc_samples):
        return saved
    model, x_test, y_test = load_run_model(run_dir, data_dir)
    return uncertainty_record(run_uncertainty(model, x_test, y_test, mc_samples))


def uncertainty_tables(runs, mc_samples=30, data_dir=None):
    """`(metrics, ood, coverage)` DataFrames of every run, one row per run and method."""
    metrics, ood, coverage = [], [], []
    for run in runs:
        saved = load_uncertainty(run["run_dir"], mc_samples, data_dir)
        name = run["run_dir"].name
        metrics += [{"run": name, **row} for row in saved["metrics"]]
        ood += [{"run": name, **row} for row in saved["ood"]]
        coverage += [{**row, "method": f"{name}, {row['method']}"} for row in saved["coverage"]]
    return (
        pd.DataFrame(metrics).set_index(["run", "method"]),
        pd.DataFrame(ood),
        pd.DataFrame(coverage),
    )


def headline(summary, difference):
    """One paragraph: the mean test accuracy of each variant and what the interval says."""
    means = summary.groupby("variant")["test_accuracy"].agg(["mean", "count"])
    parts = [f"{v}: {row['mean']:.4f} ({int(row['count'])} run(s))" for v, row in means.iterrows()]
    text = "Mean test accuracy — " + "; ".join(parts) + "."
    if difference is not None:
        row = difference.set_index("metric").loc["test_accuracy"]
        low, high = row["ci95_low"], row["ci95_high"]
        verdict = (
            "the interval excludes zero: a real difference at this sample size"
            if low > 0 or high < 0
            else "the interval includes zero: these runs cannot tell the two apart"
        )
        text += (
            f" {row['difference']}: {row['mean']:+.4f} (95% interval {low:+.4f} to "
            f"{high:+.4f}); {verdict}."
        )
    return f"<p>{html.escape(text)}</p>"


def write_comparison(run_dirs, output, mc_samples=30, data_dir=None):
    """Writes the comparison of `run_dirs` into `output/` and returns its `index.html`.

    `data_dir` is where the data are (default: searched), for runs without a report yet.
    """
    if len(run_dirs) < 2:
        raise UserError(f"compare needs at least two run directories. Received: {len(run_dirs)}")
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise UserError(f"--output {output} is a file, not a folder; choose another --output")
    runs = [load_run(d) for d in run_dirs]
    finished = [run for run in runs if run["metrics"]]
    if not finished:
        raise UserError("none of these runs is finished (no metrics.json); finish one first")
    summary = summarize(runs)
    per_variant, difference = seed_statistics(summary)
    metrics, ood, coverage = uncertainty_tables(finished, mc_samples, data_dir)
    # Written only now that every check has passed.
    files.write_text(output / "summary.csv", summary.to_csv(index=False))
    files.write_text(output / "per_variant.csv", per_variant.to_csv())
    if difference is not None:
        files.write_text(output / "difference.csv", difference.to_csv(index=False))
    files.write_text(output / "uncertainty.csv", metrics.to_csv())
    files.write_text(output / "ood.csv", ood.to_csv(index=False))

    with plots.closing_figures():
        plots.plot_overlay(runs, output / "curves.png")
        plots.plot_accuracy_coverage(coverage, output / "coverage.png")
        labelled = ood.assign(method=ood["run"] + ", " + ood["method"]).drop(columns="run")
        plots.plot_ood_auroc(labelled, output / "ood.png")
    verdicts = "".join(
        f"<li><b>{html.escape(r.run)}</b>: {html.escape(r.verdict)}</li>"
        for r in summary.itertuples()
    )
    no_interval = (
        "<p>No confidence interval: it needs two variants with at least two runs each. "
        "Train several seeds (<code>make compare</code>) for one.</p>"
    )
    ood_table = ood.pivot_table(
        index=["run", "method"], columns="dataset", values="auroc_entropy", sort=False
    )
    sections = [
        ("Summary", headline(summary, difference)),
        ("Overfitting", f"<ul>{verdicts}</ul>"),
        ("Curves", image("curves.png", "overlaid curves and generalization gap")),
        ("Runs", table_html(summary.drop(columns="verdict").set_index("run"))),
        ("Per variant (mean, std, runs)", table_html(per_variant)),
        (
            "Difference with 95% confidence interval",
            no_interval if difference is None else table_html(difference),
        ),
        (
            "How sure each model is",
            "<p>Deterministic: the softmax of one pass; MC dropout: the mean of "
            f"{mc_samples} passes with only the Dropout layers active (networks with "
            "dropout only).</p>"
            + table_html(metrics.rename(columns=SHORT_NAMES))
            + image("coverage.png", "accuracy against coverage, every run"),
        ),
        (
            "Out-of-distribution inputs (AUROC by entropy)",
            table_html(ood_table) + image("ood.png", "out-of-distribution AUROC, every run"),
        ),
    ]
    write_page(output / "index.html", "Comparison: " + ", ".join(summary["run"]), sections)
    return output / "index.html"
