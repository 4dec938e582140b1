"""Baseline versus dropout: overlaid curves, generalization gap, verdicts, seed statistics."""

import html
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import yaml
from matplotlib.ticker import MaxNLocator
from scipy import stats

from fashion_keras import files
from fashion_keras.report import _save, _table_html, load_run, write_page


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


def _interval(a, b, paired, confidence=0.95):
    """Mean difference a - b with a t confidence interval (paired, or Welch's)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if paired:
        d = a - b
        mean, se, dof = d.mean(), d.std(ddof=1) / np.sqrt(len(d)), len(d) - 1
    else:
        va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
        mean, se = a.mean() - b.mean(), np.sqrt(va + vb)
        dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = stats.t.ppf(0.5 + confidence / 2, dof) * se
    return mean, mean - half, mean + half


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
        mean, low, high = _interval(a[metric], b[metric], paired)
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


def plot_overlay(runs, path=None):
    """Validation and training curves of several runs on shared axes, plus the gap."""
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, run in enumerate(runs):
        h, name, c = run["history"], run["run_dir"].name, colors[i % len(colors)]
        axes[0].plot(h["epoch"], h["loss"], ":", color=c, label=f"{name} training")
        axes[0].plot(h["epoch"], h["val_loss"], "-", color=c, label=f"{name} validation")
        axes[1].plot(h["epoch"], h["accuracy"], ":", color=c, label=f"{name} training")
        axes[1].plot(h["epoch"], h["val_accuracy"], "-", color=c, label=f"{name} validation")
        axes[2].plot(h["epoch"], h["val_loss"] - h["loss"], "-", color=c, label=name)
        best = h.loc[h["val_loss"].idxmin()]
        axes[0].plot(best["epoch"], best["val_loss"], "v", color=c, ms=8)
    titles = (
        "loss (▼ = minimum validation loss)",
        "accuracy",
        "generalization gap: validation − training loss",
    )
    for ax, title in zip(axes, titles, strict=True):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[2].axhline(0, color="grey", lw=1)
    return _save(fig, path)


def write_comparison(run_dirs, output):
    """Writes the comparison of `run_dirs` into `output/` and returns its `index.html`."""
    if len(run_dirs) < 2:
        raise ValueError(f"compare needs at least two run directories. Received: {len(run_dirs)}")
    runs = [load_run(d) for d in run_dirs]
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    plot_overlay(runs, output / "curves.png")
    plt.close("all")
    summary = summarize(runs)
    files.write_text(output / "summary.csv", summary.to_csv(index=False))
    per_variant, difference = seed_statistics(summary)
    files.write_text(output / "per_variant.csv", per_variant.to_csv())
    sections = [
        ("Curves", '<img src="curves.png" alt="overlaid curves and generalization gap">'),
        ("Runs", _table_html(summary.drop(columns="verdict").set_index("run"))),
        (
            "Verdicts",
            "<ul>"
            + "".join(
                f"<li><b>{html.escape(r.run)}</b>: {html.escape(r.verdict)}</li>"
                for r in summary.itertuples()
            )
            + "</ul>",
        ),
        ("Per variant (mean, std, runs)", _table_html(per_variant)),
    ]
    if difference is not None:
        files.write_text(output / "difference.csv", difference.to_csv(index=False))
        sections.append(("Difference with 95% confidence interval", _table_html(difference)))
    else:
        sections.append(
            (
                "Difference",
                "<p>One run per variant: no confidence interval. "
                "Train several seeds (<code>make compare</code>) for one.</p>",
            )
        )
    write_page(output / "index.html", "Comparison: " + ", ".join(summary["run"]), sections)
    return output / "index.html"
