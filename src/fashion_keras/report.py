"""What a run learned, shown: curves, sample grids, per-class metrics, calibration.

Plot functions return a matplotlib `Figure` and save it only when given a path, so a
notebook can show them inline. `write_report(run_dir)` puts all of it, with an
`index.html` that opens from disk, into `RUN_DIR/report/`.
"""

import html
import json
from pathlib import Path

import keras
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import ConfusionMatrixDisplay, classification_report, confusion_matrix

from fashion_keras import files
from fashion_keras.callbacks import read_history
from fashion_keras.data import CLASS_NAMES
from fashion_keras.train import load_run_model


def load_run(run_dir):
    """A run directory's `config.yaml` (as text), `metrics.json` and `history.csv`."""
    run_dir = Path(run_dir)
    if not (run_dir / "history.csv").is_file():
        raise ValueError(f"{run_dir} is not a run directory (no history.csv)")
    metrics_path = run_dir / "metrics.json"
    return {
        "run_dir": run_dir,
        "config": (run_dir / "config.yaml").read_text(),
        "metrics": json.loads(metrics_path.read_text()) if metrics_path.is_file() else {},
        "history": pd.DataFrame(read_history(run_dir / "history.csv")),
    }


def _save(fig, path):
    if path is not None:
        with files.atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight", format=Path(path).suffix[1:])
    return fig


def plot_curves(history, metrics=None, path=None, title=None):
    """Loss and accuracy per epoch, training vs validation, best validation epoch marked.

    Args:
        history: DataFrame with `epoch`, `loss`, `val_loss`, `accuracy`, `val_accuracy`.
        metrics: optional `metrics.json` dict; its test loss/accuracy (of the final model)
            are drawn as a marker at the last epoch.
        path: save the figure there too.
    """
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    best = history.loc[history["val_loss"].idxmin(), "epoch"]
    for ax, key in zip(axes, ("loss", "accuracy"), strict=True):
        ax.plot(history["epoch"], history[key], "o-", ms=3, label=f"training {key}")
        ax.plot(history["epoch"], history[f"val_{key}"], "o-", ms=3, label=f"validation {key}")
        if metrics and f"test_{key}" in metrics:
            ax.plot(
                history["epoch"].iloc[-1],
                metrics[f"test_{key}"],
                "k*",
                ms=12,
                label=f"test {key} (final model)",
            )
        ax.axvline(best, color="grey", ls="--", lw=1, label=f"best validation loss (epoch {best})")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title or "Training and validation per epoch")
    return _save(fig, path)


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
    return _save(fig, path)


def classification_table(y_true, y_pred):
    """scikit-learn's classification report with class names, as a DataFrame."""
    report = classification_report(
        y_true,
        y_pred,
        labels=range(len(CLASS_NAMES)),
        target_names=CLASS_NAMES,
        output_dict=True,
        zero_division=0,
    )
    return pd.DataFrame(report).T.rename(index={"accuracy": "accuracy (all)"})


def per_class_accuracy(y_true, y_pred):
    """Share of each class's test images predicted correctly, as a Series."""
    cm = confusion_matrix(y_true, y_pred, labels=range(len(CLASS_NAMES)))
    return pd.Series(cm.diagonal() / cm.sum(axis=1).clip(min=1), index=CLASS_NAMES, name="accuracy")


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
    return _save(fig, path)


def calibration_bins(probabilities, y_true, bins=15):
    """Per-bin confidence, accuracy and count of the top prediction, as a DataFrame."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == y_true
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    rows = []
    for b in range(bins):
        mask = which == b
        rows.append(
            {
                "low": edges[b],
                "high": edges[b + 1],
                "count": int(mask.sum()),
                "confidence": float(confidence[mask].mean()) if mask.any() else np.nan,
                "accuracy": float(correct[mask].mean()) if mask.any() else np.nan,
            }
        )
    return pd.DataFrame(rows)


def expected_calibration_error(probabilities, y_true, bins=15):
    """ECE: the count-weighted mean gap between confidence and accuracy over bins."""
    table = calibration_bins(probabilities, y_true, bins).dropna()
    gaps = (table["confidence"] - table["accuracy"]).abs()
    return float((gaps * table["count"]).sum() / table["count"].sum())


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
    return _save(fig, path)


def predict_test_set(run_dir, data_dir=None, checkpoint="model.keras"):
    """The run's model on its test set: `(x_test, y_true, probabilities)`."""
    model, x_test, y_test = load_run_model(run_dir, data_dir, checkpoint)
    logits = model.predict(x_test, batch_size=512, verbose=0)
    return x_test, y_test, np.asarray(keras.ops.softmax(logits, axis=-1))


def _table_html(frame, float_format="{:.4f}".format):
    return frame.to_html(float_format=float_format, border=0, classes="table")


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
img {{ max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; }}
.table {{ border-collapse: collapse; font-size: 0.9em; }}
.table td, .table th {{ padding: 0.25em 0.7em; border-bottom: 1px solid #ddd; text-align: right; }}
pre {{ background: #f6f6f6; padding: 1em; overflow-x: auto; }}
</style></head>
<body>
<h1>{title}</h1>
{body}
<script>
// Marks images that failed to load, so a broken page says so.
window.addEventListener("load", () => {{
  const imgs = [...document.images];
  const ok = imgs.filter((i) => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.images = ok + "/" + imgs.length;
}});
</script>
</body></html>
"""


def write_page(path, title, sections):
    """Writes an HTML page of `(heading, html)` sections next to its images."""
    body = "\n".join(f"<h2>{html.escape(h)}</h2>\n{content}" for h, content in sections)
    files.write_text(path, PAGE.format(title=html.escape(title), body=body))


def write_report(run_dir, data_dir=None, samples=18):
    """Writes the full report of a finished run into `RUN_DIR/report/`.

    Returns:
        The path of `index.html`.
    """
    run = load_run(run_dir)
    run_dir, history, metrics = run["run_dir"], run["history"], run["metrics"]
    x, y_true, probs = predict_test_set(run_dir, data_dir)  # fails first on an unfinished run
    out = run_dir / "report"
    out.mkdir(exist_ok=True)
    y_pred, confidence = probs.argmax(axis=1), probs.max(axis=1)
    right, wrong = np.flatnonzero(y_pred == y_true), np.flatnonzero(y_pred != y_true)

    plot_curves(history, metrics, out / "curves.png", title=f"{run_dir.name}: per-epoch curves")
    for name, idx in (("correct", right[:samples]), ("incorrect", wrong[:samples])):
        plot_samples(
            x[idx],
            y_true[idx],
            y_pred[idx],
            confidence[idx],
            out / f"{name}.png",
            title=f"{name.capitalize()}ly classified test images (first {len(idx)})",
        )
    plot_confusion_matrix(y_true, y_pred, out / "confusion_matrix.png")
    plot_reliability(probs, y_true, path=out / "reliability.png")
    plt.close("all")

    table = classification_table(y_true, y_pred)
    files.write_text(
        out / "classification_report.txt",
        classification_report(
            y_true,
            y_pred,
            labels=range(len(CLASS_NAMES)),
            target_names=CLASS_NAMES,
            digits=4,
            zero_division=0,
        ),
    )
    files.write_text(out / "classification_report.csv", table.to_csv())
    per_class = per_class_accuracy(y_true, y_pred)
    files.write_text(out / "per_class_accuracy.csv", per_class.to_csv())
    ece = expected_calibration_error(probs, y_true)
    summary = {
        **metrics,
        "expected_calibration_error": ece,
        "test_errors": int(len(wrong)),
        "test_images": int(len(y_true)),
    }
    files.write_json(out / "summary.json", summary)

    metrics_frame = pd.Series(summary, name="value").to_frame()
    write_page(
        out / "index.html",
        f"Run report: {run_dir.name}",
        [
            ("Metrics", _table_html(metrics_frame.astype(str))),
            ("Loss and accuracy", '<img src="curves.png" alt="loss and accuracy curves">'),
            ("Correctly classified", '<img src="correct.png" alt="correctly classified samples">'),
            (
                "Incorrectly classified",
                '<img src="incorrect.png" alt="incorrectly classified samples">',
            ),
            ("Classification report", _table_html(table)),
            ("Per-class accuracy", _table_html(per_class.to_frame())),
            ("Confusion matrix", '<img src="confusion_matrix.png" alt="confusion matrix">'),
            (
                "Calibration",
                f"<p>Expected calibration error: {ece:.4f}</p>"
                '<img src="reliability.png" alt="reliability diagram">',
            ),
            ("Config", f"<pre>{html.escape(run['config'])}</pre>"),
        ],
    )
    return out / "index.html"
