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
from scipy import stats

from fashion_keras import files
from fashion_keras.config import load_config
from fashion_keras.errors import UserError
from fashion_keras.metrics import expected_calibration_error
from fashion_keras.rundir import load_run, load_run_model, read_json

RATES = (0.25, 0.25, 0.4, 0.3)  # the dropout variant's, scaled by each strength


@dataclasses.dataclass(frozen=True)
class Grid:
    strengths: tuple  # multiples of RATES
    epochs: dict  # training-set size -> epochs (smaller sets need more to overfit)
    seeds: tuple
    eval_limit: int | None = None  # validation and test images (None: all)


# Sized for about two hours on a 2-core CPU with bfloat16 (see README): 36 runs.
DEFAULT = Grid(strengths=(0.0, 0.5, 1.0, 1.5), epochs={5000: 80, 15000: 40, 55000: 20},
               seeds=(1, 2, 3))  # fmt: skip
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

    from fashion_keras.train import train

    todo = [c for c in cells(grid) if not (Path(output) / c.name / "metrics.json").is_file()]
    total = len(cells(grid))
    print(f"Dropout study in {output}: {total - len(todo)} of {total} runs done", flush=True)
    started = time.perf_counter()
    for i, cell in enumerate(todo, start=1):
        print(f"[{total - len(todo) + i}/{total}] {cell.name} ...", flush=True)
        result = train(cell_config(cell, grid), Path(output) / cell.name, data_dir, verbose=0)
        keras.backend.clear_session()  # one process trains them all: free each graph
        per_cell = (time.perf_counter() - started) / i
        print(
            f"    test accuracy {result.metrics['test_accuracy']:.4f}; about "
            f"{(len(todo) - i) * per_cell / 60:.0f} min left",
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

    def half_width(values):
        values = np.asarray(values, float)
        if len(values) < 2:
            return np.nan
        return stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))

    grouped = table.groupby(["train_size", "strength"])
    means = grouped[["test_accuracy", "test_loss", "ece"]].mean()
    halves = grouped[["test_accuracy", "test_loss", "ece"]].agg(half_width).add_suffix("_ci95")
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


def conclusions(table, summary):
    """The grid's answers in plain words, computed from the numbers (never written by hand)."""
    lines = []
    for size, group in summary.groupby("train_size"):
        none = group[group["strength"] == 0].iloc[0] if (group["strength"] == 0).any() else None
        best = group.loc[group["test_accuracy"].idxmax()]
        overfit = table[(table["train_size"] == size) & (table["strength"] == 0)]["overfits"]
        text = f"With {size:,} training images, "
        if best["strength"] == 0 or none is None:
            text += "no dropout did best on test accuracy"
        else:
            gain = 100 * (best["test_accuracy"] - none["test_accuracy"])
            sure = (
                "more than"
                if gain / 100 > best["test_accuracy_ci95"] + none["test_accuracy_ci95"]
                else "within"
            )
            text += (
                f"dropout x{best['strength']:g} did best: test accuracy "
                f"{best['test_accuracy']:.4f} against {none['test_accuracy']:.4f} without "
                f"({gain:+.2f} points, {sure} the seeds' spread), test loss "
                f"{best['test_loss']:.3f} against {none['test_loss']:.3f}, calibration error "
                f"{best['ece']:.3f} against {none['ece']:.3f}"
            )
        if len(overfit):
            text += (
                f". Without dropout the validation loss rose again in {int(overfit.sum())} "
                f"of {len(overfit)} runs"
            )
        lines.append(text + ".")
    gains = []
    for size, group in summary.groupby("train_size"):
        none = group[group["strength"] == 0]
        if len(none):
            gains.append((size, group["test_accuracy"].max() - none["test_accuracy"].iloc[0]))
    if len(gains) > 1:
        smallest, largest = gains[0], gains[-1]
        trend = "more" if smallest[1] > largest[1] else "less"
        lines.append(
            f"Dropout helps {trend} the less data there is: the best strength gains "
            f"{100 * smallest[1]:+.2f} points at {smallest[0]:,} images and "
            f"{100 * largest[1]:+.2f} at {largest[0]:,}."
        )
    return lines


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
    from fashion_keras.report import _image, _table_html, write_page

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
    plots.plot_study(summary, output / "study.png")
    write_page(
        output / "index.html",
        "Dropout study: how much dropout, for how much data?",
        [
            (
                "Conclusions",
                "<ul>" + "".join(f"<li>{html.escape(w)}</li>" for w in words) + "</ul>",
            ),
            (
                "Test accuracy, loss and calibration against dropout strength",
                _image("study.png", "metrics against dropout strength"),
            ),  # fmt: skip
            ("Best strength per data size", _table_html(best.set_index("train_size"))),
            ("Mean over seeds, with 95% confidence half-widths", _table_html(summary)),
            ("Every run", _table_html(table.set_index(["train_size", "strength", "seed"]))),
        ],
    )
    if docs is not None:
        files.write_json(Path(docs) / "summary.json", report)
        plots.plot_study(summary, Path(docs) / "study.png")
    return output / "index.html"
