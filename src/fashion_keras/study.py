"""The dropout study: how much dropout, for how much data?

A grid of ordinary training runs of the tutorial network: dropout strength (multiples of the
`dropout` variant's rates, 0 being the baseline) x training-set size x seeds, each long
enough for the network without dropout to overfit. Every cell is a run directory under the
study's folder, so a stopped study continues where it stopped (finished cells are skipped,
an unfinished one resumes). `write_study` then draws test accuracy, test loss and
calibration error against dropout strength, one line per data size with 95% confidence
bands over seeds, and says in words what the grid shows.

Example:
    >>> run_study("runs/study")  # about two hours on 2 CPU cores (see README)
    >>> write_study("runs/study")
"""

import dataclasses
import html
import time
from pathlib import Path

import numpy as np
import pandas as pd

from fashion_keras import files
from fashion_keras.config import load_config
from fashion_keras.errors import UserError
from fashion_keras.metrics import expected_calibration_error
from fashion_keras.models import model_args
from fashion_keras.pages import image, table_html, write_page
from fashion_keras.rundir import load_run, load_run_model, read_json
from fashion_keras.stats import difference_interval, holm, mean_half_width, paired_p_value

RATES = tuple(model_args("dropout")["dropout_rates"])  # scaled by each strength


@dataclasses.dataclass(frozen=True)
class Grid:
    strengths: tuple  # multiples of RATES
    epochs: dict  # training-set size -> epochs (smaller sets need more to overfit)
    seeds: tuple
    eval_limit: int | None = None  # validation and test images (None: all)


# 60 runs, sized for about two hours on a 2-core CPU with bfloat16 (see README).
DEFAULT = Grid(strengths=(0.0, 0.5, 1.0, 1.5, 2.0), epochs={5000: 80, 15000: 40, 55000: 20},
               seeds=(1, 2, 3, 4))  # fmt: skip
QUICK = Grid(strengths=(0.0, 1.0), epochs={500: 3, 1000: 2}, seeds=(1, 2), eval_limit=500)


@dataclasses.dataclass(frozen=True)
class Cell:
    strength: float
    train_size: int
    seed: int

    @property
    def name(self):
        return f"size{self.train_size}-strength{self.strength:g}-seed{self.seed}"


def cells(grid):
    """Every cell of `grid`, smallest data first (the quickest answers come first)."""
    return [
        Cell(strength, size, seed)
        for size in sorted(grid.epochs)
        for seed in grid.seeds
        for strength in grid.strengths
    ]


def cell_config(cell, grid):
    """The `dropout` preset with the cell's rates, data size, epochs and seed."""
    rates = [round(rate * cell.strength, 4) for rate in RATES]
    overrides = [
        f"model.dropout_rates={rates}",
        f"training.epochs={grid.epochs[cell.train_size]}",
        f"seed={cell.seed}",
        f"name={cell.name}",
    ]
    if cell.train_size < 55000:
        overrides.append(f"data.train_limit={cell.train_size}")
    if grid.eval_limit:
        overrides.append(f"data.eval_limit={grid.eval_limit}")
    return load_config("dropout", overrides)


def run_study(output, grid=DEFAULT, data_dir=None):
    """Trains every cell of `grid` not yet finished under `output/`, one after another.

    Prints a line per cell with the time left. Returns the number of cells trained now.
    """
    import keras

    from fashion_keras.rundir import tidy_finished
    from fashion_keras.train import train

    for cell in cells(grid):  # a cell killed after its metrics.json may still hold a backup
        tidy_finished(Path(output) / cell.name)
    todo = [c for c in cells(grid) if not (Path(output) / c.name / "metrics.json").is_file()]
    total = len(cells(grid))
    print(f"Dropout study in {output}: {total - len(todo)} of {total} runs done", flush=True)
    # Time left, from the images trained so far: runs on more data take longer.
    work = [cell.train_size * grid.epochs[cell.train_size] for cell in todo]
    started, done = time.perf_counter(), 0
    for i, cell in enumerate(todo):
        print(f"[{total - len(todo) + i + 1}/{total}] {cell.name} ...", flush=True)
        result = train(cell_config(cell, grid), Path(output) / cell.name, data_dir, verbose=0)
        keras.backend.clear_session()  # one process trains them all: free each graph
        # A resumed cell trained only the epochs after its backup.
        done += cell.train_size * (result.metrics["epochs"] - result.metrics["resumed_from_epoch"])
        left = sum(work[i + 1 :]) * (time.perf_counter() - started) / max(done, 1) / 60
        print(
            f"    test accuracy {result.metrics['test_accuracy']:.4f}; about {left:.0f} min left",
            flush=True,
        )
    return len(todo)


def collect(output, grid=DEFAULT, data_dir=None):
    """One row per finished cell: its settings, test accuracy and loss, calibration error,
    and whether its validation loss rose again (overfitting)."""
    from fashion_keras.compare import overfitting_verdict
    from fashion_keras.uncertainty import deterministic_predict

    rows = []
    for cell in cells(grid):
        run_dir = Path(output) / cell.name
        metrics = read_json(run_dir / "metrics.json")
        if metrics is None:
            continue
        model, x_test, y_test = load_run_model(run_dir, data_dir)
        probabilities = deterministic_predict(model, x_test).probabilities
        rows.append(
            {
                **dataclasses.asdict(cell),
                "test_accuracy": metrics["test_accuracy"],
                "test_loss": metrics["test_loss"],
                "ece": expected_calibration_error(probabilities, y_test),
                "best_epoch": metrics["best_epoch"],
                "epochs": metrics["epochs"],
                "fit_time_s": metrics["fit_time_s"],
                "overfits": overfitting_verdict(load_run(run_dir)["history"]).startswith(
                    "Overfits"
                ),
            }
        )
    return pd.DataFrame(rows)


def aggregate(table):
    """Mean and 95% t confidence half-width over seeds, per data size and strength."""
    grouped = table.groupby(["train_size", "strength"])
    means = grouped[["test_accuracy", "test_loss", "ece"]].mean()
    halves = grouped[["test_accuracy", "test_loss", "ece"]].agg(mean_half_width).add_suffix("_ci95")
    runs = grouped.size().rename("runs")
    return pd.concat([means, halves, runs], axis=1).reset_index()


def best_strengths(summary):
    """Per data size, the strength with the highest mean test accuracy and the lowest loss."""
    rows = []
    for size, group in summary.groupby("train_size"):
        by_accuracy = group.loc[group["test_accuracy"].idxmax()]
        rows.append(
            {
                "train_size": size,
                "best_strength_accuracy": by_accuracy["strength"],
                "test_accuracy": by_accuracy["test_accuracy"],
                "best_strength_loss": group.loc[group["test_loss"].idxmin(), "strength"],
            }
        )
    return pd.DataFrame(rows)


def gains_over_none(table):
    """For one data size: each strength's test-accuracy gain over no dropout, paired by seed.

    The best of several strengths, picked on the test set, would look better than the seeds'
    noise more often than a single comparison: so each gain's p-value (paired t test) is
    corrected with Holm's method for all the strengths compared, and only the corrected
    p-value decides whether a gain is more than the noise.

    Returns:
        A DataFrame indexed by strength (> 0) with `gain`, `half_width` (of the 95% t
        interval; NaN with one seed), `p` and `p_holm`.
    """
    accuracy = table.pivot_table(index="seed", columns="strength", values="test_accuracy")
    rows = {}
    for strength in [s for s in accuracy.columns if s != 0]:
        pairs = accuracy[[strength, 0.0]].dropna()
        gain, half = float((pairs[strength] - pairs[0.0]).mean()), np.nan
        if len(pairs) > 1:
            gain, low, high = difference_interval(pairs[strength], pairs[0.0], paired=True)
            half = (high - low) / 2
        rows[strength] = {
            "gain": gain,
            "half_width": half,
            "p": paired_p_value(pairs[strength], pairs[0.0]),
        }
    gains = pd.DataFrame.from_dict(rows, orient="index")
    gains["p_holm"] = holm(gains["p"])
    return gains


def _gain_words(gains, strength):
    row = gains.loc[strength]
    if np.isnan(row["half_width"]):
        return f"{100 * row['gain']:+.2f} points, one seed"
    noise = "more than" if row["p_holm"] < 0.05 else "within"
    return (
        f"{100 * row['gain']:+.2f} ± {100 * row['half_width']:.2f} points, {noise} the seeds' "
        f"noise: p = {row['p_holm']:.3f} after Holm's correction for {len(gains)} "
        f"comparison{'s' if len(gains) > 1 else ''}"
    )


def conclusions(table, summary):
    """The grid's answers in plain words, computed from the numbers (never written by hand).

    Each sentence speaks of one named strength: the one with the best mean test accuracy
    at that data size. Its gain is judged after Holm's correction (see `gains_over_none`).
    """
    lines = []
    for size, group in summary.groupby("train_size"):
        none = group[group["strength"] == 0].iloc[0] if (group["strength"] == 0).any() else None
        best = group.loc[group["test_accuracy"].idxmax()]
        overfit = table[(table["train_size"] == size) & (table["strength"] == 0)]["overfits"]
        text = f"With {size:,} training images, "
        if none is None:
            text += f"dropout x{best['strength']:g} did best (no run without dropout)"
        elif best["strength"] == 0:
            text += "no dropout did best on test accuracy"
        else:
            gains = gains_over_none(table[table["train_size"] == size])
            text += (
                f"dropout x{best['strength']:g} did best: test accuracy "
                f"{best['test_accuracy']:.4f} against {none['test_accuracy']:.4f} without "
                f"({_gain_words(gains, best['strength'])}); at x{best['strength']:g} the "
                f"test loss is {best['test_loss']:.3f} against {none['test_loss']:.3f}, the "
                f"calibration error {best['ece']:.3f} against {none['ece']:.3f}"
            )
        if len(overfit):
            text += (
                f". Without dropout the validation loss rose again in {int(overfit.sum())} "
                f"of {len(overfit)} runs"
            )
        lines.append(text + ".")
    if summary[summary["strength"] == 0]["train_size"].nunique() > 1:
        lines.append(trend(summary))
    return lines


def trend(summary):
    """How the best strength's gains over no dropout change with the data size, in words:
    the accuracy gain and the loss cut of one strength per size, the best on accuracy."""
    sizes, strengths, accuracy, loss = [], [], [], []
    for size, group in summary.groupby("train_size"):
        if not (group["strength"] == 0).any():
            continue
        none = group[group["strength"] == 0].iloc[0]
        best = group.loc[group["test_accuracy"].idxmax()]
        sizes.append(f"{size:,}")
        strengths.append(f"x{best['strength']:g}")
        accuracy.append(f"{100 * (best['test_accuracy'] - none['test_accuracy']):+.2f}")
        loss.append(1 - best["test_loss"] / none["test_loss"])

    def order(values):
        if all(a > b for a, b in zip(values, values[1:], strict=False)):
            return "larger the less data there is"
        if all(a < b for a, b in zip(values, values[1:], strict=False)):
            return "larger the more data there is"
        return "in no steady order by data size"

    cuts = ", ".join(f"{100 * c:.0f}%" for c in loss)
    return (
        f"Across {', '.join(sizes)} images, the strength with the best test accuracy "
        f"({', '.join(strengths)}) gains {', '.join(accuracy)} points of it and cuts the test "
        f"loss by {cuts}: a cut {order(loss)}."
    )


BEST_COLUMNS = {
    "best_strength_accuracy": "strength: best accuracy",
    "test_accuracy": "its test accuracy",
    "best_strength_loss": "strength: lowest loss",
}


def write_study(output, grid=DEFAULT, data_dir=None, docs=None):
    """Writes the study's page (`output/index.html`), figure, tables and `summary.json`.

    Args:
        output: the study's folder (cells as run directories).
        grid: the grid the cells belong to.
        data_dir: where the data are (default: searched).
        docs: also copy `summary.json` and the figure into this folder (e.g. `docs/study`).

    Returns:
        The path of `index.html`.
    """
    from fashion_keras import plots

    output = Path(output)
    table = collect(output, grid, data_dir)
    if table.empty:
        raise UserError(f"{output} holds no finished run of the study; run it first")
    summary = aggregate(table)
    best = best_strengths(summary)
    words = conclusions(table, summary)
    report = {
        "grid": {**dataclasses.asdict(grid), "rates": RATES},
        "runs": table.to_dict("records"),
        "summary": summary.to_dict("records"),
        "best": best.to_dict("records"),
        "conclusions": words,
        "fit_time_s": float(table["fit_time_s"].sum()),
    }
    files.write_json(output / "summary.json", report)
    files.write_text(output / "runs.csv", table.to_csv(index=False))
    with plots.closing_figures():
        plots.plot_study(summary, output / "study.png")
    write_page(
        output / "index.html",
        "Dropout study: how much dropout, for how much data?",
        [
            (
                "Conclusions",
                "<ul>" + "".join(f"<li>{html.escape(w)}</li>" for w in words) + "</ul>"
                "<p>±: the 95% t interval of the gain in test accuracy over the seeds, each "
                "seed's run compared with the same seed's run without dropout. The best "
                "strength is picked on the test set, so whether its gain is more than the "
                "seeds' noise is judged by a paired t test corrected with Holm's method for "
                "every strength compared.</p>",
            ),
            (
                "Test accuracy, loss and calibration against dropout strength",
                image("study.png", "metrics against dropout strength"),
            ),  # fmt: skip
            (
                "Best strength per data size",
                table_html(best.set_index("train_size").rename(columns=BEST_COLUMNS)),
            ),
            ("Mean over seeds, with 95% confidence half-widths", table_html(summary)),
            ("Every run", table_html(table.set_index(["train_size", "strength", "seed"]))),
        ],
    )
    if docs is not None:
        files.write_json(Path(docs) / "summary.json", report)
        with plots.closing_figures():
            plots.plot_study(summary, Path(docs) / "study.png")
    return output / "index.html"
