"""What dropout buys, against the alternatives: the sentences on known numbers, and the quick
grid end to end (stopped, continued, rerun)."""

import json
import re
import types

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from fashion_keras import methods
from fashion_keras.config import dump_config
from fashion_keras.errors import UserError
from fashion_keras.stats import holm

from conftest import ROOT, run_cli
from test_resume import kill_while_writing

PLAIN_NLL = (0.30, 0.32, 0.31)


def _table(ensemble_nll=0.25):
    """Three seeds of each single-model method and one deep ensemble. Means of the NLL:
    plain 0.31, temperature 0.2883, dropout 0.31, MC dropout 0.2833; of the ECE: plain 0.035,
    temperature 0.011 (the lowest), dropout 0.0283, MC dropout 0.0217, the ensemble 0.02."""
    nll = {
        "plain": PLAIN_NLL,
        "temperature": (0.28, 0.30, 0.285),
        "dropout": (0.29, 0.31, 0.33),
        "mc_dropout": (0.27, 0.30, 0.28),
    }
    ece = {
        "plain": (0.03, 0.04, 0.035),
        "temperature": (0.010, 0.012, 0.011),
        "dropout": (0.02, 0.035, 0.03),
        "mc_dropout": (0.015, 0.02, 0.03),
    }
    rows = []
    for method in nll:
        for i, seed in enumerate((1, 2, 3)):
            rows.append(
                {
                    "method": method,
                    "seed": seed,
                    "models": 1,
                    "passes": 30 if method == "mc_dropout" else 1,
                    "negative_log_likelihood": nll[method][i],
                    "expected_calibration_error": ece[method][i],
                    "fit_time_s": 100.0 if method in ("plain", "temperature") else 160.0,
                    "predict_s_per_10k": 30.0 if method == "mc_dropout" else 1.0,
                }
            )
    rows.append(
        {
            "method": "ensemble",
            "seed": None,
            "models": 5,
            "passes": 5,
            "negative_log_likelihood": ensemble_nll,
            "expected_calibration_error": 0.02,
            "fit_time_s": 500.0,
            "predict_s_per_10k": 5.0,
        }
    )
    return pd.DataFrame(rows)


def _conclusions(table):
    return methods.conclusions(table, methods.aggregate(table))


def test_the_sentences_name_the_best_method_and_test_it_against_the_seeds():
    words = _conclusions(_table(ensemble_nll=0.25))
    # The ensemble's one value against plain softmax's seeds: ttest_1samp p = 0.00913, the
    # smallest but one of four; Holm: max(3 * 0.00587, 3 * 0.00913) = 0.0274.
    assert words[0] == (
        "Deep ensemble has the lowest test NLL: 0.2500, 0.0600 lower (-19%) than plain "
        "softmax's 0.3100 (more than the seeds' noise: p = 0.027, one-sample t test of plain "
        "softmax's seeds against the ensemble's one value, after Holm's correction for 4 "
        "comparisons)."
    )
    # Temperature's ECE, paired by seed: ttest_rel p = 0.00913, the smallest: 4 * p = 0.0365.
    assert words[1] == (
        "Temperature scaling has the lowest test calibration error (ECE): 0.0110, 0.0240 lower "
        "(-69%) than plain softmax's 0.0350 (more than the seeds' noise: p = 0.037, paired t "
        "test over seeds, after Holm's correction for 4 comparisons)."
    )
    assert words[2] == (
        "Against plain softmax, MC dropout (1 model, 30 passes) cuts the test NLL by 9% (more "
        "than the seeds' noise) at 1.6x the training time and 30.0x the prediction time; deep "
        "ensemble (5 models, 5 passes) cuts the test NLL by 19% (more than the seeds' noise) "
        "at 5.0x the training time and 5.0x the prediction time."
    )


def test_the_sentences_change_when_the_ensemble_is_worse():
    words = _conclusions(_table(ensemble_nll=0.40))
    # MC dropout is now the lowest: paired p = 0.0153, third of four: Holm 2 * p = 0.0305.
    assert words[0].startswith(
        "MC dropout has the lowest test NLL: 0.2833, 0.0267 lower (-9%) than plain softmax's "
        "0.3100 (more than the seeds' noise: p = 0.031, paired t test over seeds"
    )
    assert "deep ensemble (5 models, 5 passes) raises the test NLL by 29%" in words[2]
    assert words != _conclusions(_table(ensemble_nll=0.25))

    worse = _table(ensemble_nll=0.25)
    others = worse["method"] != "plain"
    worse.loc[others, "negative_log_likelihood"] += 0.1  # plain softmax is now the best
    words = _conclusions(worse)
    # Holm's correction of the four p-values, computed here from scipy directly.
    shifted = worse[others & worse["seed"].notna()].groupby("method", sort=False)
    p = [stats.ttest_rel(g["negative_log_likelihood"], PLAIN_NLL).pvalue for _, g in shifted]
    p_holm = holm([*p, stats.ttest_1samp(PLAIN_NLL, 0.35).pvalue])[-1]
    verdict = "more than" if p_holm < 0.05 else "within"
    assert words[0] == (
        "Plain softmax has the lowest test NLL, 0.3100; the next, deep ensemble, is 0.0400 "
        f"higher (+13%) ({verdict} the seeds' noise: p = {p_holm:.3f}, one-sample t test of "
        "plain softmax's seeds against the ensemble's one value, after Holm's correction for 4 "
        "comparisons)."
    )
    assert "deep ensemble (5 models, 5 passes) raises the test NLL by 13%" in words[2]


def test_versus_plain_pairs_seeds_and_tests_an_ensemble_against_them():
    table = _table(ensemble_nll=0.25)
    compared = methods.versus_plain(table, "negative_log_likelihood")
    assert list(compared.index) == ["temperature", "dropout", "mc_dropout", "ensemble"]
    mc = table[table["method"] == "mc_dropout"]["negative_log_likelihood"]
    assert compared.loc["mc_dropout", "p"] == pytest.approx(stats.ttest_rel(mc, PLAIN_NLL).pvalue)
    assert compared.loc["ensemble", "test"] == "one-sample"
    assert compared.loc["ensemble", "p"] == pytest.approx(stats.ttest_1samp(PLAIN_NLL, 0.25).pvalue)
    assert compared["p_holm"].tolist() == holm(compared["p"])
    one_seed = table[table["seed"].isna() | (table["seed"] == 1)]
    words = _conclusions(one_seed)
    assert "untested: one seed of plain softmax" in words[0]


def test_pooling_mc_predictions_is_one_method_of_all_their_passes():
    from fashion_keras.metrics import predictive_entropy
    from fashion_keras.uncertainty import Predictions

    rng = np.random.default_rng(0)
    passes = rng.dirichlet(np.ones(10), size=(4, 50))  # 4 passes of 50 images

    def mc(group):
        mean = group.mean(axis=0)
        entropy = predictive_entropy(mean)
        pass_entropy = np.mean([predictive_entropy(p) for p in group], axis=0)
        return Predictions(mean, entropy, entropy - pass_entropy, len(group), "mc_dropout")

    pooled, whole = methods.pool([mc(passes[:2]), mc(passes[2:])]), mc(passes)
    np.testing.assert_allclose(pooled.probabilities, whole.probabilities)
    np.testing.assert_allclose(pooled.mutual_information, whole.mutual_information, atol=1e-12)
    assert pooled.samples == 4 and pooled.method == "mc_ensemble"


def test_the_grids_runs_and_their_configs():
    names = [run.name for run in methods.runs(methods.DEFAULT)]
    assert names == [
        "baseline-seed1", "dropout-seed1", "baseline-seed2", "dropout-seed2",
        "baseline-seed3", "dropout-seed3", "baseline-seed4", "baseline-seed5",
    ]  # fmt: skip
    config = methods.run_config(methods.Run("dropout", 2), methods.DEFAULT)
    assert config.model["variant"] == "dropout" and config.seed == 2
    assert config.training.epochs == 15 and config.data.train_limit is None
    assert config.training.early_stopping_patience is None  # model.keras: the last epoch
    assert len(methods.runs(methods.QUICK)) == 4
    smaller = methods.Grid(epochs=15, seeds=(1, 2, 3), members=5, train_limit=5000)
    assert methods.run_config(methods.Run("baseline", 1), smaller).data.train_limit == 5000
    with pytest.raises(UserError, match="members must be an integer of at least 1"):
        methods.Grid(epochs=15, seeds=(1,), members=0)
    with pytest.raises(UserError, match="seeds must be distinct"):
        methods.Grid(epochs=15, seeds=(1, 1), members=2)
    with pytest.raises(UserError, match="train_limit must be an integer of at least 10"):
        methods.Grid(epochs=15, seeds=(1,), members=1, train_limit=5)  # not one image a class


def test_a_finished_run_of_another_grid_is_refused(tmp_path):
    run = methods.Run("baseline", 1)
    run_dir = tmp_path / run.name
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(dump_config(methods.run_config(run, methods.QUICK)))
    assert not methods.finished(run_dir, methods.run_config(run, methods.QUICK))
    (run_dir / "metrics.json").write_text('{"test_accuracy": 0.5}')
    assert methods.finished(run_dir, methods.run_config(run, methods.QUICK))
    with pytest.raises(UserError, match="finished run of another config"):
        methods.finished(run_dir, methods.run_config(run, methods.DEFAULT))


def test_the_command_explains_itself_and_checks_its_options():
    result = run_cli("methods", "--help")
    assert result.returncode == 0, result.stderr
    for option in ("--quick", "--output", "--docs", "--train-limit", "--data-dir"):
        assert option in result.stdout
    assert "8 models" in result.stdout
    for text in ("5", "55001"):  # fewer than one image a class; more than the training set
        wrong = run_cli("methods", "--train-limit", text)
        assert wrong.returncode == 2, wrong.stderr
        assert f"--train-limit: expected a whole number from 10 to 55000, got '{text}'" in (
            wrong.stderr
        )


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """The quick grid through the command: killed while its second run writes metrics.json,
    continued, then run once more."""
    root = tmp_path_factory.mktemp("methods")
    output, docs = root / "methods", root / "docs"
    args = ["methods", "--quick", "--output", str(output), "--docs", str(docs)]
    kill_while_writing(output / "dropout-seed1", "metrics.json", 2, args)
    again = run_cli(*args)
    assert again.returncode == 0, again.stderr[-2000:]
    stamps = {path: path.stat().st_mtime_ns for path in output.glob("*/*")}
    done = run_cli(*args)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((output / "summary.json").read_text())
    return types.SimpleNamespace(
        output=output, docs=docs, again=again, done=done, stamps=stamps, summary=summary
    )


def _data(grid):
    from fashion_keras.data import load_data

    data = methods.run_config(methods.runs(grid)[0], grid).data
    _, validation, test = load_data(train_limit=data.train_limit, eval_limit=data.eval_limit)
    return validation, test


def _model(quick, name):
    from fashion_keras.models import load_model

    return load_model(quick.output / name / methods.CHECKPOINT)


@pytest.mark.long
def test_a_stopped_comparison_continues_and_a_rerun_trains_nothing(quick):
    assert "1 of 4 runs done" in quick.again.stdout
    assert re.search(r"Resuming after epoch 2 from .*dropout-seed1", quick.again.stdout)
    assert quick.again.stdout.count("...") == 3  # the three runs left, no more
    assert "4 of 4 runs done" in quick.done.stdout and "..." not in quick.done.stdout
    # The minutes of scoring and shifting say where they are, method by method.
    assert "scoring [1/9] plain softmax, seed 1" in quick.done.stdout
    assert "scoring [9/9] deep ensemble of 2" in quick.done.stdout
    assert "shifting [5/5] deep ensemble of 2" in quick.done.stdout
    # Nothing in any run directory was written again by the rerun.
    assert {path: path.stat().st_mtime_ns for path in quick.output.glob("*/*")} == quick.stamps


@pytest.mark.long
def test_the_table_has_every_method_and_every_column(quick):
    summary = quick.summary
    assert [row["method"] for row in summary["summary"]] == list(methods.METHODS)
    runs = pd.DataFrame(summary["runs"])
    assert len(runs) == 4 * 2 + 2  # four single-model methods over two seeds, two ensembles
    assert [row["seed"] for row in summary["runs"]] == [1] * 4 + [2] * 4 + [None] * 2
    sets = ("digits", "inverted", "rotated", "noise")
    columns = [*methods.SCORES, "temperature", "models", "passes"]
    columns += [f"{name}_auroc_{by}" for name in sets for by in ("entropy", "mi")]
    assert set(columns) <= set(runs.columns)
    rows = runs.set_index(["method", runs["seed"].fillna(0).astype(int)])
    single = rows.loc[["plain", "temperature", "dropout"]]
    assert single["passes"].eq(1).all() and single["digits_auroc_mi"].isna().all()
    assert rows.loc[("mc_dropout", 1), "passes"] == 5
    assert rows.loc[("ensemble", 0), "passes"] == 2 and rows.loc[("mc_ensemble", 0), "passes"] == 10
    for method in ("mc_dropout", "ensemble", "mc_ensemble"):
        assert rows.loc[method, "noise_auroc_mi"].between(0, 1).all()
    assert runs[list(methods.SCORES)].notna().all().all()
    # Temperature scaling changes no prediction's class, so not the accuracy.
    assert (rows.loc["temperature", "accuracy"] == rows.loc["plain", "accuracy"]).all()
    fit = [
        json.loads((quick.output / name / "metrics.json").read_text())["fit_time_s"]
        for name in ("baseline-seed1", "baseline-seed2")
    ]
    assert rows.loc[("ensemble", 0), "fit_time_s"] == pytest.approx(sum(fit))
    assert (runs["predict_s_per_10k"] > 0).all()
    assert len(summary["conclusions"]) == 3
    assert set(summary["shift"]) == {"plain", "temperature", "dropout", "mc_dropout", "ensemble"}
    assert summary == json.loads((quick.docs / "summary.json").read_text())
    page = (quick.output / "index.html").read_text()
    headings = re.findall(r"<h2>(.*?)</h2>", page)
    assert headings[:2] == ["Conclusions", "The methods on the test set"]
    assert "Under growing shift" in headings and "External anchors" in page
    every_run = page.split("<h2>Every run</h2>")[1]
    assert every_run.count("<th>–</th>") == 2 and "nan" not in every_run
    for name in ("shift.png", "methods.csv"):
        assert (quick.output / name).stat().st_size > 0
    assert (quick.docs / "shift.png").read_bytes() == (quick.output / "shift.png").read_bytes()


@pytest.mark.long
def test_temperature_is_fitted_on_the_validation_split(quick):
    from fashion_keras.uncertainty import fit_temperature

    (x_val, y_val), (x_test, y_test) = _data(methods.QUICK)
    model = _model(quick, "baseline-seed1")
    recorded = pd.DataFrame(quick.summary["runs"]).set_index(["method", "seed"])
    temperature = recorded.loc[("temperature", 1), "temperature"]
    assert temperature == pytest.approx(fit_temperature(model.predict(x_val), y_val), rel=1e-5)
    on_test = fit_temperature(model.predict(x_test), y_test)
    assert abs(on_test - temperature) > 1e-3  # the check above can tell the splits apart


@pytest.mark.long
def test_the_ensemble_row_is_ensemble_predict_of_its_members(quick):
    from fashion_keras.metrics import expected_calibration_error, negative_log_likelihood
    from fashion_keras.uncertainty import ensemble_predict

    _, (x_test, y_test) = _data(methods.QUICK)
    members = [_model(quick, f"baseline-seed{seed}") for seed in (1, 2)]
    p = ensemble_predict(members, x_test, verbose=0).probabilities
    row = next(r for r in quick.summary["runs"] if r["method"] == "ensemble")
    assert row["runs"] == "baseline-seed1 baseline-seed2"
    assert row["negative_log_likelihood"] == pytest.approx(negative_log_likelihood(p, y_test))
    assert row["expected_calibration_error"] == pytest.approx(expected_calibration_error(p, y_test))
    assert row["accuracy"] == pytest.approx(float((p.argmax(axis=1) == y_test).mean()))


def test_the_readme_quotes_the_committed_comparison():
    """The README's table and sentences are the ones `write_methods` computed, word for word."""
    report = json.loads((ROOT / "docs" / "methods" / "summary.json").read_text())
    readme = (ROOT / "README.md").read_text()
    assert methods.readme_table(report) in readme
    flowing = " ".join(readme.split())
    for sentence in report["conclusions"]:
        assert " ".join(sentence.split()) in flowing
