"""What a run learned, as one page: `write_report(run_dir)` writes `RUN_DIR/report/index.html`.

The page opens with what a reader came for (test accuracy and loss, the epoch tested, how
long it took and on what), then the curves and sample images, the per-class tables, how
sure the model is (calibration, Monte Carlo dropout, out-of-distribution inputs), how it
fares under growing shift, and the full config and metrics at the end. The figures come
from `fashion_keras.plots`.
"""

import html
import json
import math

import numpy as np
import pandas as pd
from sklearn.metrics import classification_report, confusion_matrix

from fashion_keras import files, plots, uncertainty
from fashion_keras.data import CLASS_NAMES
from fashion_keras.metrics import expected_calibration_error
from fashion_keras.pages import SHORT_NAMES, image, table_html, write_page
from fashion_keras.rundir import RunError, load_run, load_run_model
from fashion_keras.shift import shift_series, shift_subset

SHIFT_IMAGES = 500  # the most test images a report follows along the shift series
SHIFT_MC_SAMPLES = 5  # the most Monte Carlo dropout passes per point of a series


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
    table = pd.DataFrame(report).T.rename(index={"accuracy": "accuracy (all)"})
    table.loc["accuracy (all)", "support"] = table.loc["macro avg", "support"]
    return table.astype({"support": int})


def per_class_accuracy(y_true, y_pred):
    """Share of each class's test images predicted correctly, as a Series."""
    cm = confusion_matrix(y_true, y_pred, labels=range(len(CLASS_NAMES)))
    return pd.Series(cm.diagonal() / cm.sum(axis=1).clip(min=1), index=CLASS_NAMES, name="accuracy")


def predict_test_set(run_dir, data_dir=None, checkpoint="model.keras"):
    """The run's model on its test set: `(x_test, y_true, probabilities)`."""
    model, x_test, y_test = load_run_model(run_dir, data_dir, checkpoint)
    probabilities = uncertainty.deterministic_predict(model, x_test).probabilities
    return x_test, y_test, probabilities


def duration(seconds):
    """`"25 min 49 s"`, `"41.3 s"`, or `"?"` for None."""
    if seconds is None:
        return "?"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes} min {seconds} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


def run_summary(metrics):
    """The few facts a reader of a run report wants first, as `(what, value)` rows."""
    m = metrics
    last = math.ceil(m["epochs"])  # 3.3 epochs: the last, cut short, is epoch 4
    evaluated = m.get("evaluated_epoch", last)  # runs of 0.1 tested the last epoch's weights
    tested = "the last" if evaluated == last else "the lowest validation loss"
    rows = [
        ("Test accuracy", f"{m['test_accuracy']:.4f}"),
        ("Test loss", f"{m['test_loss']:.4f}"),
        ("Weights tested", f"epoch {evaluated} of {last} ({tested})"),
        ("Lowest validation loss", f"{m['best_val_loss']:.4f} at epoch {m['best_epoch']}"),
        (
            "Training",
            f"{duration(m['fit_time_s'])} ({m['epochs']:g} epochs, "
            f"{m['seconds_per_epoch']:.1f} s each, "
            f"{m['train_images_per_s']:,.0f} images/s)",
        ),
        ("From start to test result", duration(m.get("process_wall_time_s"))),
        ("Machine", f"{m['device']}; {m['precision']}; {m['strategy']}"),
        (
            "Images",
            f"{m['train_size']:,} training, {m['val_size']:,} validation, {m['test_size']:,} test",
        ),  # fmt: skip
    ]
    if m.get("plan"):
        plan = m["plan"]
        rows.append(
            (
                "Time budget",
                f"{duration(plan['time_budget_s'])}: {plan['epochs']} epochs planned at "
                f"{plan['seconds_per_epoch']:.1f} s each",
            )
        )
    if m.get("resumed_from_epoch"):
        rows.append(("Resumed", f"after epoch {m['resumed_from_epoch']}"))
    return pd.DataFrame(rows, columns=["", "value"]).set_index("")


def run_uncertainty(model, x_test, y_test, mc_samples=30, verbose="auto"):
    """`uncertainty.uncertainty_summary` as reports and comparisons compute it (seed 0, at
    most 1,000 images per out-of-distribution set), so their numbers agree."""
    return uncertainty.uncertainty_summary(
        model, x_test, y_test, samples=mc_samples, seed=0, limit_ood=1000, verbose=verbose
    )


def uncertainty_record(summary):
    """The tables of a `run_uncertainty` summary as plain data: what a report saves as
    `RUN_DIR/report/uncertainty.json` and a comparison reads back."""
    return {
        "samples": summary["samples"],
        "metrics": summary["metrics"].reset_index().to_dict("records"),
        "ood": summary["ood"].to_dict("records"),
        "coverage": summary["coverage"].to_dict("records"),
    }


def run_shift(model, x_test, y_test, mc_samples=30):
    """The model along `shift.SHIFTS`, kept cheap for a report: at most `SHIFT_IMAGES` test
    images, one ordinary pass and, when the model has dropout, Monte Carlo dropout with at
    most `SHIFT_MC_SAMPLES` passes.

    Returns:
        A dict method (`"deterministic"`, `"mc_dropout"`) -> `shift.shift_series` DataFrame.
    """
    x, y = shift_subset(x_test, y_test, SHIFT_IMAGES)
    frames = {
        "deterministic": shift_series(
            lambda images: uncertainty.deterministic_predict(model, images), x, y
        )
    }
    if uncertainty.dropout_layers(model):
        sampler = uncertainty.mc_dropout_model(model, seed=0)
        samples = min(mc_samples, SHIFT_MC_SAMPLES)
        frames["mc_dropout"] = shift_series(
            lambda images: uncertainty.mc_passes(sampler, images, samples, verbose=0), x, y
        )
    return frames


def shift_section(images, passes):
    """The page section of `run_shift` on `images` test images, with `passes` Monte Carlo
    dropout passes (0: no dropout). The figure `shift.png` must be in the same folder."""
    methods = (
        f"one ordinary pass, and MC dropout with {passes} passes"
        if passes
        else "one ordinary pass (no dropout)"
    )
    return (
        "Under growing shift",
        f"<p>Accuracy, calibration error and NLL of {images:,} test images as they are turned, "
        f"moved, noised and faded (fashion_keras.shift): {methods}.</p>"
        + image("shift.png", "accuracy, ECE and NLL against shift intensity"),
    )


def _plain_value(value):
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.0f}"
    return json.dumps(value) if isinstance(value, dict | list) else str(value)


def metrics_table(metrics):
    """Every field of a `metrics.json`, rounded for reading, as a one-column DataFrame."""
    return pd.Series({k: _plain_value(v) for k, v in metrics.items()}, name="value").to_frame()


def uncertainty_sections(summary):
    """The page sections on how sure the model is (the figures must be in the same folder)."""
    note = (
        f"Monte Carlo dropout: the mean of {summary['samples']} passes with only the "
        "Dropout layers active."
        if summary["samples"]
        else "This network has no dropout: its uncertainty is the entropy of one softmax."
    )
    ood = summary["ood"].set_index(["method", "dataset"]).rename(columns=SHORT_NAMES)
    return [
        (
            "How sure the model is",
            f"<p>{note} Lower is better for NLL, Brier score and ECE; an AUROC of 1 means "
            "every wrong prediction was less certain than every right one.</p>"
            + table_html(summary["metrics"].rename(columns=SHORT_NAMES))
            + image("reliability.png", "reliability diagram")
            + image("entropy.png", "entropy of right and wrong predictions")
            + image("coverage.png", "accuracy against coverage"),
        ),
        (
            "Out-of-distribution inputs",
            "<p>AUROC of telling each set from the test images by uncertainty (0.5: not at "
            "all).</p>" + table_html(ood) + image("ood.png", "out-of-distribution AUROC"),
        ),
    ]


def write_report(run_dir, data_dir=None, samples=18, mc_samples=30):
    """Writes the report of a finished run into `RUN_DIR/report/`.

    Args:
        run_dir: a finished run directory.
        data_dir: where the data are (default: searched).
        samples: images in each of the correct / incorrect sample grids.
        mc_samples: Monte Carlo dropout passes (for networks with dropout).

    Returns:
        The path of `index.html`.
    """
    run = load_run(run_dir)
    run_dir, history, metrics = run["run_dir"], run["history"], run["metrics"]
    if not metrics:
        raise RunError(f"{run_dir} is not finished (no metrics.json); train it to the end first")
    model, x, y_true = load_run_model(run_dir, data_dir)
    out = run_dir / "report"
    if out.exists() and not out.is_dir():
        raise RunError(f"{out} is a file, not the report's folder; move it away and run again")
    summary = run_uncertainty(model, x, y_true, mc_samples)
    files.write_json(out / "uncertainty.json", uncertainty_record(summary))
    shift = run_shift(model, x, y_true, mc_samples)
    probs = summary["predictions"]["deterministic"].probabilities  # the one pass over x
    y_pred, confidence = probs.argmax(axis=1), probs.max(axis=1)
    right, wrong = np.flatnonzero(y_pred == y_true), np.flatnonzero(y_pred != y_true)

    with plots.closing_figures():
        plots.plot_curves(history, metrics, out / "curves.png", title=f"{run_dir.name}: per epoch")
        for name, idx in (("correct", right[:samples]), ("incorrect", wrong[:samples])):
            title = f"{name.capitalize()}ly classified test images (first {len(idx)})"
            plots.plot_samples(x[idx], y_true[idx], y_pred[idx], confidence[idx],
                               out / f"{name}.png", title=title)  # fmt: skip
        plots.plot_confusion_matrix(y_true, y_pred, out / "confusion_matrix.png")
        plots.plot_reliability(probs, y_true, path=out / "reliability.png")
        plots.plot_entropy_histograms(summary["entropy"], out / "entropy.png")
        plots.plot_accuracy_coverage(summary["coverage"], out / "coverage.png")
        plots.plot_ood_auroc(summary["ood"], out / "ood.png")
        plots.plot_shift_series(shift, out / "shift.png", title=f"{run_dir.name}: under shift")

    table = classification_table(y_true, y_pred)
    files.write_text(out / "classification_report.csv", table.to_csv())
    text = classification_report(
        y_true,
        y_pred,
        labels=range(len(CLASS_NAMES)),
        target_names=CLASS_NAMES,
        digits=4,
        zero_division=0,
    )
    files.write_text(out / "classification_report.txt", text)
    per_class = per_class_accuracy(y_true, y_pred)
    files.write_text(out / "per_class_accuracy.csv", per_class.to_csv())
    files.write_json(
        out / "summary.json",
        {
            **metrics,
            "expected_calibration_error": expected_calibration_error(probs, y_true),
            "test_errors": int(len(wrong)),
            "test_images": int(len(y_true)),
            "uncertainty": summary["metrics"].to_dict("index"),
            "shift": {method: frame.to_dict("records") for method, frame in shift.items()},
        },
    )
    write_page(
        out / "index.html",
        f"Run report: {run_dir.name}",
        [
            ("Summary", table_html(run_summary(metrics))),
            ("Loss and accuracy per epoch", image("curves.png", "loss and accuracy curves")),
            ("Correctly classified", image("correct.png", "correctly classified samples")),
            ("Incorrectly classified", image("incorrect.png", "incorrectly classified samples")),
            ("Classification report", table_html(table)),
            ("Per-class accuracy", table_html(per_class.to_frame())),
            ("Confusion matrix", image("confusion_matrix.png", "confusion matrix")),
            *uncertainty_sections(summary),
            shift_section(
                min(SHIFT_IMAGES, len(y_true)), min(summary["samples"], SHIFT_MC_SAMPLES)
            ),
            ("Config", f"<pre>{html.escape(run['config'])}</pre>"),
            ("All metrics", table_html(metrics_table(metrics))),
        ],
    )
    return out / "index.html"
