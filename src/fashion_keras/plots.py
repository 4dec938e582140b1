"""Plots of runs, comparisons and uncertainty: each function returns a matplotlib `Figure`.

A figure is saved only when the function is given a `path`, so a notebook can show it inline.
"""

import contextlib
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import ConfusionMatrixDisplay

from fashion_keras import files
from fashion_keras.data import CLASS_NAMES, NUM_CLASSES
from fashion_keras.metrics import calibration_bins, expected_calibration_error

METHOD_LABELS = {
    "deterministic": "deterministic",
    "mc_dropout": "MC dropout",
    "temperature": "temperature scaling",
    "ensemble": "ensemble",
}
SHIFT_UNITS = {
    "rotation": "degrees",
    "translation": "pixels",
    "noise": "noise standard deviation",
    "contrast": "contrast factor",
}


@contextlib.contextmanager
def closing_figures():
    """Closes the figures created inside the `with` block, and only those: a notebook's own
    figures stay open.

    Example:
        >>> with closing_figures():
        ...     plot_curves(history, path="report/curves.png")
    """
    before = set(plt.get_fignums())
    try:
        yield
    finally:
        for number in set(plt.get_fignums()) - before:
            plt.close(number)


def save_figure(fig, path):
    """Saves `fig` to `path` atomically (the format from its suffix); returns `fig`."""
    if path is not None:
        with files.atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight", format=Path(path).suffix[1:])
    return fig


def plot_curves(history, metrics=None, path=None, title=None):
    """Loss and accuracy per epoch, training vs validation, best validation epoch marked.

    Args:
        history: DataFrame with `epoch`, `loss`, `val_loss`, `accuracy`, `val_accuracy`.
        metrics: optional `metrics.json` dict; its test loss and accuracy are drawn as a
            marker at the epoch whose weights were tested (`evaluated_epoch`).
        path: save the figure there too.
    """
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    best = history.loc[history["val_loss"].idxmin(), "epoch"]
    for ax, key in zip(axes, ("loss", "accuracy"), strict=True):
        ax.plot(history["epoch"], history[key], "o-", ms=3, label=f"training {key}")
        ax.plot(history["epoch"], history[f"val_{key}"], "o-", ms=3, label=f"validation {key}")
        if metrics and f"test_{key}" in metrics:
            epoch = metrics.get("evaluated_epoch", history["epoch"].iloc[-1])
            label = f"test {key} (weights of epoch {epoch})"
            ax.plot(epoch, metrics[f"test_{key}"], "k*", ms=12, label=label)
        ax.axvline(best, color="grey", ls="--", lw=1, label=f"best validation loss (epoch {best})")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title or "Training and validation per epoch")
    return save_figure(fig, path)


def plot_samples(images, y_true, y_pred, confidence, path=None, title=None, columns=6):
    """A grid of images titled "true / predicted (confidence)"."""
    n = len(images)
    rows = max(1, -(-n // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.9, rows * 2.2))
    for i, ax in enumerate(np.atleast_1d(axes).ravel()):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(images[i].squeeze(), cmap="gray", vmin=0, vmax=1)
        ok = y_true[i] == y_pred[i]
        ax.set_title(
            f"true: {CLASS_NAMES[y_true[i]]}\npred: {CLASS_NAMES[y_pred[i]]} ({confidence[i]:.0%})",
            fontsize=7,
            color="darkgreen" if ok else "darkred",
        )
    fig.suptitle(title or "Test images")
    return save_figure(fig, path)


def plot_confusion_matrix(y_true, y_pred, path=None):
    fig, ax = plt.subplots(figsize=(8, 7))
    ConfusionMatrixDisplay.from_predictions(
        y_true,
        y_pred,
        labels=range(len(CLASS_NAMES)),
        display_labels=CLASS_NAMES,
        xticks_rotation=45,
        cmap="Blues",
        colorbar=False,
        ax=ax,
    )
    ax.set_title("Confusion matrix (test set)")
    return save_figure(fig, path)


def plot_reliability(probabilities, y_true, bins=15, path=None):
    """Reliability diagram: accuracy against confidence per bin, with the diagonal."""
    table = calibration_bins(probabilities, y_true, bins)
    ece = expected_calibration_error(probabilities, y_true, bins)
    fig, ax = plt.subplots(figsize=(5, 5))
    width = 1 / bins
    ax.bar(
        table["low"],
        table["accuracy"].fillna(0),
        width=width,
        align="edge",
        edgecolor="black",
        alpha=0.7,
        label="accuracy",
    )
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set_xlabel("confidence of the top class")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability (ECE {ece:.3f})")
    ax.legend(loc="upper left")
    return save_figure(fig, path)


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
    return save_figure(fig, path)


def plot_entropy_histograms(entropy, path=None, title=None):
    """Histograms of predictive entropy, right vs wrong predictions, one panel per method.

    Args:
        entropy: `uncertainty_summary(...)["entropy"]`: method -> {"correct": array,
            "incorrect": array}.
        path: save the figure there too.
        title: the figure's title.

    Example:
        >>> plot_entropy_histograms(summary["entropy"], path="report/entropy.png")
    """
    fig, axes = plt.subplots(1, len(entropy), figsize=(5.5 * len(entropy), 4), squeeze=False)
    top = max(
        [np.log(NUM_CLASSES)] + [v.max() for d in entropy.values() for v in d.values() if len(v)]
    )
    edges = np.linspace(0, top, 31)
    for ax, (method, parts) in zip(axes[0], entropy.items(), strict=True):
        for kind, color in (("correct", "tab:green"), ("incorrect", "tab:red")):
            values = parts[kind]
            ax.hist(
                values,
                bins=edges,
                density=True,
                alpha=0.5,
                color=color,
                label=f"{kind} ({len(values)})",
            )
        ax.set_title(METHOD_LABELS.get(method, method))
        ax.set_xlabel("predictive entropy (nats)")
        ax.set_ylabel("density")
        ax.legend(fontsize=8)
    fig.suptitle(title or "Uncertainty of right and wrong predictions (test set)")
    return save_figure(fig, path)


def plot_accuracy_coverage(coverage, path=None, title=None):
    """Accuracy against the share of most certain test images kept, one line per method.

    Args:
        coverage: `uncertainty_summary(...)["coverage"]`, or an `accuracy_coverage_curve`
            with a `method` column added.
        path: save the figure there too.
        title: the figure's title.
    """
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for method, curve in coverage.groupby("method", sort=False):
        ax.plot(
            curve["coverage"],
            curve["accuracy"],
            "o-",
            ms=3,
            label=METHOD_LABELS.get(method, method),
        )
    ax.set_xlabel("coverage (share of test images kept, most certain first)")
    ax.set_ylabel("accuracy on the kept images")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title or "Accuracy against coverage (ranked by entropy)")
    return save_figure(fig, path)


def plot_ood_auroc(ood, path=None, title=None):
    """Bars of out-of-distribution AUROC per set, by method and uncertainty score.

    Args:
        ood: `uncertainty_summary(...)["ood"]`.
        path: save the figure there too.
        title: the figure's title.
    """
    long = ood.melt(
        id_vars=["method", "dataset"],
        value_vars=["auroc_entropy", "auroc_mutual_information"],
        var_name="score",
        value_name="auroc",
    ).dropna()
    long["label"] = (
        long["method"].map(lambda m: METHOD_LABELS.get(m, m))
        + ", "
        + long["score"].str.removeprefix("auroc_").str.replace("_", " ")
    )
    table = long.pivot_table(index="dataset", columns="label", values="auroc", sort=False)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    table.plot.bar(ax=ax, rot=0, width=0.8)
    ax.axhline(0.5, color="grey", ls="--", lw=1, label="chance")
    ax.set_ylim(0, 1)
    ax.set_xlabel("out-of-distribution set")
    ax.set_ylabel("AUROC against the test set")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title or "Telling out-of-distribution images apart by uncertainty")
    return save_figure(fig, path)


def plot_study(summary, path=None):
    """Test accuracy, loss and calibration error against dropout strength, one line per
    training-set size, with 95% confidence bands over seeds (`study.aggregate`'s table)."""
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    panels = (("test_accuracy", "test accuracy"), ("test_loss", "test loss"),
              ("ece", "expected calibration error"))  # fmt: skip
    for ax, (key, label) in zip(axes, panels, strict=True):
        for size, group in summary.groupby("train_size"):
            group = group.sort_values("strength")
            line = ax.plot(group["strength"], group[key], "o-", label=f"{size:,} images")[0]
            band = group[f"{key}_ci95"].fillna(0)
            ax.fill_between(group["strength"], group[key] - band, group[key] + band,
                            color=line.get_color(), alpha=0.2)  # fmt: skip
        ax.set_xlabel("dropout strength (x the dropout variant's rates)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Dropout study: mean over seeds, 95% confidence bands")
    return save_figure(fig, path)


def plot_shift_series(frames_by_method, path=None, title=None):
    """Accuracy, calibration error and NLL against shift intensity, one line per method.

    One column per kind of shift, in the order of the first frame; rows accuracy, expected
    calibration error and negative log-likelihood. The horizontal axis runs from no shift
    to the most severe one (reversed for contrast, whose factor falls as the shift grows).

    Args:
        frames_by_method: method name -> `fashion_keras.shift.shift_series(...)` DataFrame,
            e.g. `{"deterministic": ..., "ensemble": ...}`.
        path: save the figure there too.
        title: the figure's title.

    Example:
        >>> with closing_figures():
        ...     plot_shift_series({"mc_dropout": frame}, path="report/shift.png")
    """
    first = next(iter(frames_by_method.values()))
    shifts = list(dict.fromkeys(first["shift"]))
    rows = (
        ("accuracy", "accuracy"),
        ("expected_calibration_error", "expected calibration error"),
        ("negative_log_likelihood", "negative log-likelihood (nats)"),
    )
    fig, axes = plt.subplots(
        len(rows), len(shifts), figsize=(4 * len(shifts), 8.5), squeeze=False, sharex="col"
    )
    for method, frame in frames_by_method.items():
        for column, shift in enumerate(shifts):
            series = frame[frame["shift"] == shift]
            for row, (key, _) in enumerate(rows):
                label = METHOD_LABELS.get(method, method)
                axes[row, column].plot(series["intensity"], series[key], "o-", ms=3, label=label)
    for column, shift in enumerate(shifts):
        axes[0, column].set_title(shift)
        axes[-1, column].set_xlabel(SHIFT_UNITS.get(shift, "intensity"))
        intensities = first.loc[first["shift"] == shift, "intensity"]
        if intensities.iloc[0] > intensities.iloc[-1]:
            axes[0, column].invert_xaxis()  # shared by the column
    for row, (_, label) in enumerate(rows):
        axes[row, 0].set_ylabel(label)
    for ax in axes.ravel():
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(title or "Accuracy and calibration under growing shift")
    return save_figure(fig, path)
