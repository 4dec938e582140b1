"""What dropout buys, against the alternatives: five ways to say how sure the tutorial network is.

On the same test set: plain softmax (the `baseline` variant), temperature scaling of that
model (T fitted on the validation split), the `dropout` variant predicting once and with
Monte Carlo dropout, a deep ensemble of plain models, and the ensemble of the Monte Carlo
dropout models. Every model is an ordinary run directory under the comparison's folder
(`baseline-seed1`, `dropout-seed1`, ...), so a stopped comparison continues where it
stopped (finished runs are skipped, an unfinished one resumes). `write_methods` then scores
each method (accuracy, NLL, Brier, calibration, error and out-of-distribution detection,
selective accuracy, training and prediction time), follows each along the shifts of
`fashion_keras.shift`, and says in words what the numbers show.

Example:
    >>> run_methods("runs/methods")  # 8 trainings of 15 epochs, see `fashion-keras methods -h`
    >>> write_methods("runs/methods")
"""

import dataclasses
import html
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from fashion_keras import files
from fashion_keras.checks import check_int
from fashion_keras.config import dump_config, load_config
from fashion_keras.data import NUM_CLASSES
from fashion_keras.errors import UserError
from fashion_keras.metrics import (
    accuracy_coverage_curve,
    brier_score,
    error_detection_auroc,
    expected_calibration_error,
    negative_log_likelihood,
    ood_auroc,
    predictive_entropy,
)
from fashion_keras.pages import image, table_html, write_page
from fashion_keras.rundir import read_json
from fashion_keras.stats import holm, mean_half_width, one_sample_p_value, paired_p_value

CHECKPOINT = "model.keras"  # the last epoch's weights, as the study reads its runs
COVERAGE = 0.9  # selective accuracy: on the surest 90 % of the test images
WARM_UP = 600  # images predicted before the timed call: a full batch of 512 and a partial one


@dataclasses.dataclass(frozen=True)
class Grid:
    epochs: int  # of every model (one recipe for all, the tutorial's)
    seeds: tuple  # single-model methods are trained and scored once per seed
    members: int  # the deep ensemble: the plain models of seeds 1..members
    train_limit: int | None = None  # training images (None: all 55,000)
    eval_limit: int | None = None  # validation and test images (None: all)
    mc_samples: int = 30  # Monte Carlo dropout passes on the test and out-of-distribution sets
    ood_limit: int = 2000  # the most images per out-of-distribution set
    shift_images: int = 2000  # test images followed along the shift series
    shift_mc_samples: int = 10  # Monte Carlo dropout passes at each point of a shift series

    def __post_init__(self):
        for name in ("epochs", "members", "mc_samples", "ood_limit", "shift_images"):
            check_int(name, getattr(self, name), minimum=1)
        check_int("shift_mc_samples", self.shift_mc_samples, minimum=1)
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise UserError(f"seeds must be distinct and at least one. Received: {self.seeds!r}")
        for seed in self.seeds:
            check_int("seed", seed, minimum=0)
        for name in ("train_limit", "eval_limit"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), minimum=NUM_CLASSES)


# 8 trainings (5 plain, 3 dropout) on all 55,000 images; see `fashion-keras methods -h`.
DEFAULT = Grid(epochs=15, seeds=(1, 2, 3), members=5)
QUICK = Grid(epochs=2, seeds=(1, 2), members=2, train_limit=1000, eval_limit=500, mc_samples=5,
             ood_limit=500, shift_images=200, shift_mc_samples=3)  # fmt: skip

METHODS = {
    "plain": "plain softmax",
    "temperature": "temperature scaling",
    "dropout": "dropout, deterministic",
    "mc_dropout": "MC dropout",
    "ensemble": "deep ensemble",
    "mc_ensemble": "ensemble of MC dropout models",
}


@dataclasses.dataclass(frozen=True)
class Run:
    variant: str  # "baseline" or "dropout"
    seed: int

    @property
    def name(self):
        return f"{self.variant}-seed{self.seed}"


def runs(grid):
    """Every run the comparison needs: each seed's plain and dropout model first (the
    single-model rows come first), then the ensemble's other members."""
    ordered = [Run(variant, seed) for seed in grid.seeds for variant in ("baseline", "dropout")]
    others = sorted(set(range(1, grid.members + 1)) - set(grid.seeds))
    return ordered + [Run("baseline", seed) for seed in others]


def run_config(run, grid):
    """The run's preset (`baseline` or `dropout`) with the grid's epochs, data and the seed."""
    overrides = [f"training.epochs={grid.epochs}", f"seed={run.seed}", f"name={run.name}"]
    if grid.train_limit:
        overrides.append(f"data.train_limit={grid.train_limit}")
    if grid.eval_limit:
        overrides.append(f"data.eval_limit={grid.eval_limit}")
    return load_config(run.variant, overrides)


def finished(run_dir, config):
    """Whether `run_dir` holds a finished run of `config`; a finished run of another config
    (another grid in the same folder) is a `UserError`, never a silent mix."""
    if read_json(Path(run_dir) / "metrics.json") is None:
        return False
    if dump_config(load_config(Path(run_dir) / "config.yaml")) != dump_config(config):
        raise UserError(
            f"{run_dir} holds a finished run of another config (another grid?); choose another "
            "--output for this one"
        )
    return True


def run_methods(output, grid=DEFAULT, data_dir=None):
    """Trains every run of `grid` not yet finished under `output/`, one after another.

    Prints a line per run with the time left. Returns the number of runs trained now.
    """
    import keras

    from fashion_keras.rundir import tidy_finished
    from fashion_keras.train import train

    for run in runs(grid):  # a run killed after its metrics.json may still hold a backup
        tidy_finished(Path(output) / run.name)
    todo = [r for r in runs(grid) if not finished(Path(output) / r.name, run_config(r, grid))]
    total = len(runs(grid))
    print(f"Methods in {output}: {total - len(todo)} of {total} runs done", flush=True)
    started, done = time.perf_counter(), 0
    for i, run in enumerate(todo):
        print(f"[{total - len(todo) + i + 1}/{total}] {run.name} ...", flush=True)
        result = train(run_config(run, grid), Path(output) / run.name, data_dir, verbose=0)
        keras.backend.clear_session()  # one process trains them all: free each graph
        done += result.metrics["epochs"] - result.metrics["resumed_from_epoch"]
        left = (len(todo) - i - 1) * grid.epochs * (time.perf_counter() - started) / max(done, 1)
        print(
            f"    test accuracy {result.metrics['test_accuracy']:.4f}; about {left / 60:.0f} "
            "min left",
            flush=True,
        )
    return len(todo)


# --------------------------------------------------------------------------- the methods


@dataclasses.dataclass(frozen=True)
class Method:
    name: str  # a key of METHODS
    runs: tuple  # the names of the run directories whose models it predicts with
    predict: Callable  # images -> fashion_keras.uncertainty.Predictions
    seed: int | None = None  # None for an ensemble
    temperature: float = float("nan")  # temperature scaling's T


def load_runs(output, grid, data_dir=None):
    """The finished runs' models (`CHECKPOINT`), their training times, and the validation and
    test split of their config: `(models, fit_times, (x_val, y_val), (x_test, y_test))`."""
    from fashion_keras.data import load_data
    from fashion_keras.models import load_model

    output = Path(output)
    models, fit_times = {}, {}
    for run in runs(grid):
        if not finished(output / run.name, run_config(run, grid)):
            raise UserError(f"{output / run.name} is not finished; run the comparison first")
        models[run.name] = load_model(output / run.name / CHECKPOINT)
        fit_times[run.name] = read_json(output / run.name / "metrics.json")["fit_time_s"]
    data = run_config(runs(grid)[0], grid).data
    _, validation, test = load_data(data_dir, **dataclasses.asdict(data))
    return models, fit_times, validation, test


def seed_methods(models, seed, validation, mc_samples):
    """The four single-model methods of one seed. Temperature scaling's T is fitted here,
    on the validation split's logits (`fit_temperature`); the test split only reports."""
    from fashion_keras import uncertainty as u

    plain, dropout = f"baseline-seed{seed}", f"dropout-seed{seed}"
    x_val, y_val = validation
    temperature = u.fit_temperature(models[plain].predict(x_val, verbose=0), y_val)
    sampler = u.mc_dropout_model(models[dropout], seed=seed)
    return [
        Method("plain", (plain,), lambda x: u.deterministic_predict(models[plain], x), seed),
        Method(
            "temperature",
            (plain,),
            lambda x: u.temperature_predict(models[plain], x, temperature),
            seed,
            temperature,
        ),
        Method("dropout", (dropout,), lambda x: u.deterministic_predict(models[dropout], x), seed),
        Method(
            "mc_dropout", (dropout,), lambda x: u.mc_passes(sampler, x, mc_samples, verbose=0), seed
        ),
    ]


def ensemble_method(models, grid):
    """The deep ensemble: the plain models of seeds 1..`grid.members` (`ensemble_predict`)."""
    from fashion_keras.uncertainty import ensemble_predict

    names = tuple(Run("baseline", seed).name for seed in range(1, grid.members + 1))
    members = [models[name] for name in names]
    return Method("ensemble", names, lambda x: ensemble_predict(members, x, verbose=0))


def pool(predictions):
    """The mixture of several models' Monte Carlo `Predictions` of the same images, as if all
    their passes were one method's: the mean probabilities, and the mutual information of
    all the passes (each model's mean pass entropy is its entropy minus its mutual
    information). Every model must have made the same number of passes."""
    from fashion_keras.uncertainty import Predictions

    probabilities = np.mean([p.probabilities for p in predictions], axis=0)
    entropy = predictive_entropy(probabilities)
    pass_entropy = np.mean([p.entropy - p.mutual_information for p in predictions], axis=0)
    samples = sum(p.samples for p in predictions)
    return Predictions(
        probabilities, entropy, np.maximum(entropy - pass_entropy, 0.0), samples, "mc_ensemble"
    )


def predict_all(method, x_test, ood):
    """The method's `Predictions` of the test set and of each out-of-distribution set, and
    the seconds of its call on the test set (after a warm-up call, so that building Keras'
    predict function is not counted)."""
    method.predict(x_test[:WARM_UP])
    started = time.perf_counter()
    test = method.predict(x_test)
    seconds = time.perf_counter() - started
    return {"test": test, **{name: method.predict(x) for name, x in ood.items()}}, seconds


def scores(predictions, y_test):
    """The table's scores of one method's `predict_all` predictions."""
    test = predictions["test"]
    p, correct = test.probabilities, test.probabilities.argmax(axis=1) == y_test
    curve = accuracy_coverage_curve(p, y_test, test.entropy, coverages=(COVERAGE,))
    row = {
        "accuracy": float(correct.mean()),
        "negative_log_likelihood": negative_log_likelihood(p, y_test),
        "brier_score": brier_score(p, y_test),
        "expected_calibration_error": expected_calibration_error(p, y_test),
        "error_auroc_entropy": error_detection_auroc(test.entropy, correct),
        "accuracy_at_90": float(curve["accuracy"].iloc[0]),
    }
    for name, result in predictions.items():
        if name != "test":
            row[f"{name}_auroc_entropy"] = ood_auroc(test.entropy, result.entropy)
            row[f"{name}_auroc_mi"] = (  # one pass has no disagreement to rank by
                ood_auroc(test.mutual_information, result.mutual_information)
                if test.samples > 1
                else float("nan")
            )
    return row


def _row(method, predictions, seconds, fit_times, y_test):
    return {
        "method": method.name,
        "seed": method.seed,
        "runs": " ".join(method.runs),
        "models": len(method.runs),
        "passes": predictions["test"].samples,
        "temperature": method.temperature,
        **scores(predictions, y_test),
        "fit_time_s": float(sum(fit_times[name] for name in method.runs)),
        "predict_s_per_10k": seconds * 10_000 / len(y_test),
    }


def collect(output, grid=DEFAULT, data_dir=None):
    """One row per single-model method and seed, and one per ensemble: its runs, passes,
    temperature, scores (see `scores`), training time (the sum of its runs' `fit_time_s`)
    and prediction time per 10,000 test images, measured in this process.

    The ensemble of Monte Carlo dropout models pools the dropout rows' predictions; its
    prediction time is the sum of theirs.
    """
    from fashion_keras.uncertainty import ood_sets

    models, fit_times, validation, (x_test, y_test) = load_runs(output, grid, data_dir)
    ood = ood_sets(x_test, rng_seed=0, limit=grid.ood_limit)
    methods = [
        m for seed in grid.seeds for m in seed_methods(models, seed, validation, grid.mc_samples)
    ]
    methods.append(ensemble_method(models, grid))
    rows, mc = [], []
    for i, method in enumerate(methods):
        _say(f"scoring [{i + 1}/{len(methods)}] {METHODS[method.name]}{_of(method)}")
        predictions, seconds = predict_all(method, x_test, ood)
        rows.append(_row(method, predictions, seconds, fit_times, y_test))
        if method.name == "mc_dropout":
            mc.append((method, predictions, seconds))
    if len(mc) > 1:
        pooled = {key: pool([p[key] for _, p, _ in mc]) for key in mc[0][1]}
        names = tuple(name for method, _, _ in mc for name in method.runs)
        method = Method("mc_ensemble", names, predict=None)
        rows.append(_row(method, pooled, sum(s for _, _, s in mc), fit_times, y_test))
    return pd.DataFrame(rows).astype({"seed": "Int64"})  # an ensemble has none (<NA>)


def _of(method):
    return f", seed {method.seed}" if method.seed is not None else f" of {len(method.runs)}"


def _say(text):
    """A progress line: scoring and the shift series take minutes (17 on the AMD EPYC)."""
    print(f"    {text}", flush=True)


def shift_frames(output, grid=DEFAULT, data_dir=None):
    """Each method's `shift.shift_series` on `grid.shift_images` test images: the first
    seed's models for the single-model methods (`grid.shift_mc_samples` Monte Carlo
    passes), and the deep ensemble. Returns a dict method -> DataFrame."""
    from fashion_keras.shift import shift_series, shift_subset

    models, _, validation, (x_test, y_test) = load_runs(output, grid, data_dir)
    x, y = shift_subset(x_test, y_test, grid.shift_images)
    chosen = [
        *seed_methods(models, grid.seeds[0], validation, grid.shift_mc_samples),
        ensemble_method(models, grid),
    ]
    frames = {}
    for i, method in enumerate(chosen):
        _say(f"shifting [{i + 1}/{len(chosen)}] {METHODS[method.name]}{_of(method)}")
        frames[method.name] = shift_series(method.predict, x, y)
    return frames


# --------------------------------------------------------------------------- in numbers


def aggregate(table):
    """Per method, in the order of `METHODS`: the mean of every number over its seeds, the
    95% t confidence half-width of each (NaN for an ensemble, one value), and `repeats`."""
    numbers = [c for c in table.columns if c not in ("method", "seed", "runs")]
    varying = [c for c in numbers if c not in ("models", "passes")]
    grouped = table.groupby("method", sort=False)
    means = grouped[numbers].mean()
    halves = grouped[varying].agg(mean_half_width).add_suffix("_ci95")
    repeats = grouped.size().rename("repeats")
    summary = pd.concat([means, halves, repeats], axis=1)
    return summary.loc[[m for m in METHODS if m in summary.index]].reset_index()


def versus_plain(table, metric):
    """Each method's `metric` against plain softmax's, with the p-value of the difference.

    A method repeated over seeds is compared seed by seed (paired t test); an ensemble,
    one value, by a one-sample t test of plain softmax's seeds against that value. The
    sentences speak of the best method, picked on the test set, so every p-value is
    corrected with Holm's method for all the methods compared.

    Returns:
        A DataFrame indexed by method with `value` and `plain` (means), `test` ("paired"
        or "one-sample"), `p` and `p_holm` (NaN with one seed).
    """
    plain = table[table["method"] == "plain"].set_index("seed")[metric]
    rows = {}
    for method, group in table[table["method"] != "plain"].groupby("method", sort=False):
        if group["seed"].isna().any():
            test, p = "one-sample", one_sample_p_value(plain, group[metric].iloc[0])
        else:
            pairs = pd.concat([group.set_index("seed")[metric], plain], axis=1, join="inner")
            test, p = "paired", paired_p_value(pairs.iloc[:, 0], pairs.iloc[:, 1])
        rows[method] = {"value": group[metric].mean(), "plain": plain.mean(), "test": test, "p": p}
    compared = pd.DataFrame.from_dict(rows, orient="index")
    compared["p_holm"] = holm(compared["p"])
    return compared


def _change(value, reference):
    """`"0.0312 lower (-15%)"`: `value` against `reference`."""
    difference = value - reference
    word = "lower" if difference < 0 else "higher" if difference > 0 else "no different"
    relative = f" ({difference / reference:+.0%})" if reference else ""
    return f"{abs(difference):.4f} {word}{relative}"


def _verdict(p):
    if np.isnan(p):
        return "untested: one seed of plain softmax"
    return f"{'more than' if p < 0.05 else 'within'} the seeds' noise"


def _noise(row, compared):
    """Whether one `versus_plain` row's difference is more than the seeds' noise, and how
    that was tested."""
    if np.isnan(row["p_holm"]):
        return _verdict(row["p_holm"])
    how = (
        "paired t test over seeds"
        if row["test"] == "paired"
        else "one-sample t test of plain softmax's seeds against the ensemble's one value"
    )
    return (
        f"{_verdict(row['p_holm'])}: p = {row['p_holm']:.3f}, {how}, after Holm's correction "
        f"for {compared} comparisons"
    )


def _capital(text):
    return text[:1].upper() + text[1:]  # "MC dropout" stays, unlike str.capitalize


def lowest(table, summary, metric, name):
    """The sentence on which method has the lowest mean `metric` (called `name`), against
    plain softmax."""
    means = summary.set_index("method")[metric]
    compared = versus_plain(table, metric)
    best = means.idxmin()
    if best == "plain":
        other = means.drop("plain").idxmin()
        return (
            f"Plain softmax has the lowest test {name}, {means['plain']:.4f}; the next, "
            f"{METHODS[other]}, is {_change(means[other], means['plain'])} "
            f"({_noise(compared.loc[other], len(compared))})."
        )
    return (
        f"{_capital(METHODS[best])} has the lowest test {name}: {means[best]:.4f}, "
        f"{_change(means[best], means['plain'])} than plain softmax's {means['plain']:.4f} "
        f"({_noise(compared.loc[best], len(compared))})."
    )


def _count(number, noun):
    return f"{int(number)} {noun}{'' if number == 1 else 's'}"


def costs(table, summary):
    """The sentence on what MC dropout and the deep ensemble change in test NLL against
    plain softmax, and at what cost in training and prediction time."""
    rows, compared = summary.set_index("method"), versus_plain(table, "negative_log_likelihood")
    plain = rows.loc["plain"]
    parts = []
    for method in ("mc_dropout", "ensemble"):
        row = rows.loc[method]
        change = row["negative_log_likelihood"] / plain["negative_log_likelihood"] - 1
        parts.append(
            f"{METHODS[method]} ({_count(row['models'], 'model')}, {int(row['passes'])} passes) "
            f"{'cuts' if change < 0 else 'raises'} the test NLL by {abs(change):.0%} "
            f"({_verdict(compared.loc[method, 'p_holm'])}) at "
            f"{row['fit_time_s'] / plain['fit_time_s']:.1f}x the training time and "
            f"{row['predict_s_per_10k'] / plain['predict_s_per_10k']:.1f}x the prediction time"
        )
    return "Against plain softmax, " + "; ".join(parts) + "."


def conclusions(table, summary):
    """The comparison's answers in plain words, computed from the numbers (never written by
    hand): the lowest NLL, the lowest calibration error, and what MC dropout and the deep
    ensemble buy for their cost."""
    return [
        lowest(table, summary, "negative_log_likelihood", "NLL"),
        lowest(table, summary, "expected_calibration_error", "calibration error (ECE)"),
        costs(table, summary),
    ]


# --------------------------------------------------------------------------- the page

# Published numbers of another network and recipe (LeNet-5, 10 ensemble members), beside ours.
ANCHORS = pd.DataFrame(
    {
        "accuracy": [0.910, 0.932],
        "negative_log_likelihood": [0.321, 0.200],
        "expected_calibration_error": [np.nan, 0.010],
    },
    index=["LeNet-5, one model", "LeNet-5, ensemble of 10"],
)
ANCHORS_SOURCE = "google/uncertainty-baselines, baselines/mnist/README.md (Fashion-MNIST)"
SCORES = {
    "accuracy": "accuracy",
    "negative_log_likelihood": "NLL",
    "brier_score": "Brier",
    "expected_calibration_error": "ECE",
    "error_auroc_entropy": "error AUROC (entropy)",
    "accuracy_at_90": f"accuracy at {COVERAGE:.0%} coverage",
    "fit_time_s": "training (s)",
    "predict_s_per_10k": "prediction per 10,000 images (s)",
}
DIGITS = {"fit_time_s": 1, "predict_s_per_10k": 2}  # decimals on the page; else 4


def _with_interval(row, column, digits=4):
    value, half = row[column], row[f"{column}_ci95"]
    if pd.isna(value):
        return "–"
    return f"{value:.{digits}f}" + ("" if pd.isna(half) else f" ± {half:.{digits}f}")


def _over(row, grid):
    if row["method"] == "ensemble":
        return f"one ensemble, seeds 1–{grid.members}"
    if row["method"] == "mc_ensemble":
        return f"one ensemble, seeds {', '.join(map(str, grid.seeds))}"
    return f"{int(row['repeats'])} seeds"


def methods_table(summary, grid):
    """The page's table: one row per method, mean ± 95% half-width over seeds."""
    rows = {}
    for _, row in summary.iterrows():
        rows[METHODS[row["method"]]] = {
            "models": int(row["models"]),
            "passes": int(row["passes"]),
            "over": _over(row, grid),
            **{
                label: _with_interval(row, key, DIGITS.get(key, 4)) for key, label in SCORES.items()
            },
        }
    return pd.DataFrame.from_dict(rows, orient="index")


README_COLUMNS = ["over", "accuracy", "NLL", "ECE", "error AUROC (entropy)", "training (s)",
                  "prediction per 10,000 images (s)"]  # fmt: skip


def readme_table(report):
    """The README's table of a comparison, in Markdown, from its `summary.json` (as a dict):
    the page's table, fewer columns. A test holds the README to it."""
    grid = Grid(**{**report["grid"], "seeds": tuple(report["grid"]["seeds"])})
    table = methods_table(pd.DataFrame(report["summary"]), grid)[README_COLUMNS]
    lines = [
        "| method | " + " | ".join(table.columns) + " |",
        "|" + " --- |" * (len(table.columns) + 1),
    ]
    lines += [f"| {name} | " + " | ".join(map(str, row)) + " |" for name, row in table.iterrows()]
    return "\n".join(lines)


def ood_table(summary):
    """Out-of-distribution AUROC per set, by entropy and by mutual information (MI)."""
    sets = [c.removesuffix("_auroc_entropy") for c in summary if c.endswith("_auroc_entropy")]
    sets = [name for name in sets if name != "error"]
    rows = {}
    for _, row in summary.iterrows():
        rows[METHODS[row["method"]]] = {
            f"{name} ({by})": _with_interval(row, f"{name}_auroc_{key}")
            for name in sets
            for key, by in (("entropy", "entropy"), ("mi", "MI"))
        }
    return pd.DataFrame.from_dict(rows, orient="index")


def _records(frame):
    """A DataFrame as JSON records, NaN as null."""
    return frame.astype(object).where(frame.notna(), None).to_dict("records")


def _notes(grid):
    return (
        f"<p>±: half the 95% t interval of the mean over seeds. Every model is the run's "
        f"<code>{CHECKPOINT}</code> (the last epoch's weights, as the study reads its runs). "
        "Temperature scaling divides the plain model's logits by one T, fitted on the "
        "validation split (per seed, see the runs below). MC dropout averages "
        f"{grid.mc_samples} passes with only the Dropout layers active. Out-of-distribution "
        f"sets hold at most {grid.ood_limit:,} images each. Training time: the sum of the "
        "models' fit times. Prediction time: the method's call on the test set in the process "
        "that wrote this page, after one warm-up call, scaled to 10,000 images.</p>"
    )


def write_methods(output, grid=DEFAULT, data_dir=None, docs=None):
    """Writes the comparison's page (`output/index.html`), shift figure, tables and
    `summary.json`.

    Args:
        output: the comparison's folder (runs as run directories).
        grid: the grid the runs belong to.
        data_dir: where the data are (default: searched).
        docs: also copy `summary.json` and the figure into this folder (e.g. `docs/methods`).

    Returns:
        The path of `index.html`.
    """
    from fashion_keras import plots

    output = Path(output)
    table = collect(output, grid, data_dir)
    summary = aggregate(table)
    words = conclusions(table, summary)
    frames = shift_frames(output, grid, data_dir)
    report = {
        "grid": dataclasses.asdict(grid),
        "checkpoint": CHECKPOINT,
        "runs": _records(table),
        "summary": _records(summary),
        "anchors": {
            "source": ANCHORS_SOURCE,
            "rows": _records(ANCHORS.rename_axis("anchor").reset_index()),
        },
        "shift": {method: _records(frame) for method, frame in frames.items()},
        "conclusions": words,
    }
    files.write_json(output / "summary.json", report)
    files.write_text(output / "methods.csv", table.to_csv(index=False))
    with plots.closing_figures():
        plots.plot_shift_series(
            {METHODS[m]: f for m, f in frames.items()},
            output / "shift.png",
            title=f"Under growing shift: seed {grid.seeds[0]}'s models and the deep ensemble",
        )
    write_page(output / "index.html", "What dropout buys, against the alternatives",
               _sections(table, summary, words, grid))  # fmt: skip
    if docs is not None:
        files.write_json(Path(docs) / "summary.json", report)
        files.copy_file(output / "shift.png", Path(docs) / "shift.png")
    return output / "index.html"


def _sections(table, summary, words, grid):
    anchors = ANCHORS.rename(columns=SCORES)
    return [
        (
            "Conclusions",
            "<ul>" + "".join(f"<li>{html.escape(w)}</li>" for w in words) + "</ul>",
        ),
        (
            "The methods on the test set",
            table_html(methods_table(summary, grid)) + _notes(grid) + "<p>External anchors, "
            f"another network and recipe ({html.escape(ANCHORS_SOURCE)}):</p>"
            + table_html(anchors, float_format="{:.3f}".format),
        ),  # fmt: skip
        (
            "Out-of-distribution detection (AUROC against the test images)",
            table_html(ood_table(summary)),
        ),
        (
            "Under growing shift",
            f"<p>{grid.shift_images:,} test images at most; seed {grid.seeds[0]}'s models, MC "
            f"dropout with {grid.shift_mc_samples} passes per point, and the deep ensemble."
            "</p>" + image("shift.png", "accuracy, ECE and NLL against shift intensity"),
        ),
        ("Every run", table_html(_every_run(table))),
    ]


def _every_run(table):
    """The per-run table as the page shows it: methods by name, "–" for an ensemble's seed."""
    seeds = table["seed"].astype(object).where(table["seed"].notna(), "–")
    return table.assign(method=table["method"].map(METHODS), seed=seeds).set_index(
        ["method", "seed"]
    )
