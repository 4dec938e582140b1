"""Frontier: the test accuracy each contender reaches in 1, 5 and 30 minutes, start-up included.

Each contender runs as its own Python process, so its clock starts before Python and its
framework load, as a user's does:

- fashion_keras: `fashion-keras train --config PRESET --set training.time_budget_s=S`, one run
  per budget and seed; its point is (wall time from launch to the test result it prints, that
  test accuracy), and the share of its budget it used.
- naive Keras: the tutorial network in plain `keras.Sequential`, Adam 1e-3, batch 128, float32,
  one `fit(epochs=1)` after another at a constant learning rate.
- naive Keras bfloat16: the same with `mixed_bfloat16`, as Keras' mixed-precision guide says.
- PyTorch eager: the same recipe as a plain PyTorch loop (skipped without torch installed).

The constant-rate contenders run once per seed, up to the largest budget that seed is needed
for, and are tested after every epoch: that gives their whole curve, and a budget's figure is
the last epoch that fits in it. Every figure is a mean and standard deviation over seeds
(42, 43, ...): `--seeds` of them per budget, `--long-seeds` from 30 minutes up.

    python bench/frontier.py [--budgets 1,5,30] [--seeds 3] [--long-seeds 2]
        [--contenders project,keras,keras-bf16,pytorch] [--preset NAME] [--set KEY=VALUE]
        [--train-limit N] [--runs DIR] [--json OUT] [--plot OUT.png]

`--set` passes a config override to every project run (a recipe tried against its preset:
`--contenders project --budgets 5 --set model.random_translation=0.0715`).

The defaults take about 5 hours on 2 cores: the preset runs 3 x (1 + 5) + 2 x 30 minutes,
each other contender one curve per seed up to its longest budget (2 x 30 + 5 minutes).
Prints a table and writes JSON and a plot.

Each run's result is kept as it ends, in a folder of `--runs` (default runs/frontier) named
after the setup: the CPU's name, family, model, flags and cores, Python's and the packages'
versions, the Keras backend, a digest of the code, and the options. A frontier that was
stopped, or one asked for more budgets or seeds, goes on where it was: the same command with
the same setup keeps the results it finds there and runs the rest; another setup starts
afresh in a folder of its own. A run stopped midway starts again from launch (a resumed
run's time would not be its time from launch to result), in a directory of its own.
"""

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import fashion_keras
from fashion_keras import files, rundir
from fashion_keras.machine import describe_cpu, isa_flags, seconds_since_process_start

from contenders import keras_tutorial_model, torch_tutorial_net

REPO = Path(__file__).resolve().parents[1]
BATCH_SIZE = 128
LEARNING_RATE = 1e-3
SEED = 42
CLOCK_GAP_S = 2  # seconds of launch to result the run's own clock may miss
# The project's preset for each budget in seconds, chosen on validation on the AMD EPYC
# (docs/speedrun.md); the Xeon's 5-minute record used `improved`, never compared. Other
# budgets: "fast" under 3 minutes, "fast_shifted" under 10, "improved" from there (the
# thresholds lie between budgets that were measured; override with --preset).
PRESETS = {60: "fast", 300: "fast_shifted", 1800: "improved"}
CONTENDERS = {
    "project": "fashion_keras",
    "keras": "naive Keras",
    "keras-bf16": "naive Keras bfloat16",
    "pytorch": "PyTorch eager",
}
# What `fashion-keras train` prints when a test result is in: the last such line is the
# run's (an ensemble prints one for each member first).
RESULT_LINE = "Test accuracy "
LONG_S = 1800  # budgets from here on run --long-seeds seeds
VERSIONED = ("tensorflow", "keras", "torch", "jax", "numpy")


def preset_for(seconds):
    if round(seconds) in PRESETS:
        return PRESETS[round(seconds)]
    return "fast" if seconds < 180 else "fast_shifted" if seconds < 600 else "improved"


def seeds_for(seconds, args):
    """The seeds a budget is measured with."""
    return [SEED + i for i in range(args.long_seeds if seconds >= LONG_S else args.seeds)]


def clock(seconds):
    return f"{int(seconds // 60)}:{seconds % 60:04.1f}"


# The naive contenders: child processes of this script (`--child keras|pytorch`).
def seconds_since_launch():
    """Wall seconds since the bench launched this process (it passes the time in)."""
    return time.time() - float(os.environ["FRONTIER_LAUNCHED"])


def follow_curve(train_one_epoch, evaluate, seconds, out):
    """Trains and tests epoch after epoch until the next epoch would end past `seconds`.

    A point's time is what a user who stopped after that epoch would wait: from launch to the
    end of the epoch's training, less the tests after earlier epochs (the bench's overhead),
    plus one test. That test is charged at the first test's time, which includes building the
    test step: later ones reuse it, a user's single test would not. The curve is written to
    `out` after every point, so a run that is killed keeps what it has.
    """
    curve, tested, first_test = [], 0.0, None
    while True:
        epoch_start = time.time()
        train_one_epoch()
        trained, process_age = seconds_since_launch() - tested, seconds_since_process_start()
        test_start = time.time()
        test_loss, test_accuracy = evaluate()
        first_test = first_test or time.time() - test_start
        point = {
            "epoch": len(curve) + 1,
            "seconds": round(trained + first_test, 2),
            "process_seconds": process_age and round(process_age - tested + first_test, 2),
            "test_accuracy": round(float(test_accuracy), 4),
            "test_loss": round(float(test_loss), 4),
        }
        tested += time.time() - test_start
        curve.append(point)
        files.write_text(out, json.dumps({"curve": curve}, indent=2))  # a kill keeps the last
        print(f"epoch {point['epoch']}: {test_accuracy:.4f} at {clock(point['seconds'])}")
        if point["seconds"] + (test_start - epoch_start) > seconds:  # at this epoch's pace
            return


def naive_keras(x, y, x_test, y_test, seconds, out, seed, policy="float32"):
    """The tutorial recipe as most people would write it in Keras."""
    import keras

    keras.utils.set_random_seed(seed)
    model = keras_tutorial_model(policy)
    follow_curve(
        lambda: model.fit(x, y, batch_size=BATCH_SIZE, epochs=1, shuffle=True, verbose=0),
        lambda: model.evaluate(x_test, y_test, verbose=0),  # Keras' default batch, as naive
        seconds,
        out,
    )


def pytorch_eager(x, y, x_test, y_test, seconds, out, seed):
    """The same recipe as a plain PyTorch loop (with PyTorch's default initialisation)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    torch.set_num_threads(os.cpu_count())
    net = torch_tutorial_net()
    optimizer = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE)
    loss_fn = nn.CrossEntropyLoss()
    x, x_test = (torch.from_numpy(a).permute(0, 3, 1, 2).contiguous() for a in (x, x_test))
    y, y_test = torch.from_numpy(y), torch.from_numpy(y_test)

    def train_one_epoch():
        net.train()
        for batch in torch.randperm(len(x)).split(BATCH_SIZE):  # reshuffled every epoch
            optimizer.zero_grad()
            loss_fn(net(x[batch]), y[batch]).backward()
            optimizer.step()

    @torch.no_grad()
    def evaluate():
        net.eval()
        logits = torch.cat([net(chunk) for chunk in x_test.split(1000)])
        return loss_fn(logits, y_test).item(), (logits.argmax(1) == y_test).float().mean().item()

    follow_curve(train_one_epoch, evaluate, seconds, out)


def run_naive_child(args):
    from fashion_keras import data  # numpy only: neither framework loads the other's

    (x, y), _, (x_test, y_test) = data.load_data(train_limit=args.train_limit, download=False)
    run = (x, y, x_test, y_test, args.seconds, args.json, args.seed)
    if args.child == "pytorch":
        return pytorch_eager(*run)
    naive_keras(*run, policy="mixed_bfloat16" if args.child == "keras-bf16" else "float32")


# The bench: launch each contender, echo its progress, collect its points.
def run_child(command, label, limit_s):
    """Runs `command` from the repository root, echoing its progress lines after `[label]`.

    Returns (exit status, wall seconds from launch to exit, wall seconds from launch to the
    last line that gives a test result (None if none did), the end of its stderr). A child still
    running after `limit_s` is killed.
    """
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    result_s = None
    with tempfile.TemporaryFile("w+") as stderr:
        env["FRONTIER_LAUNCHED"] = repr(launched := time.time())
        child = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=stderr)
        watchdog = threading.Timer(limit_s, child.kill)
        watchdog.start()
        try:
            for line in child.stdout:
                line = line.decode(errors="replace").rstrip()
                if line.startswith(RESULT_LINE):
                    result_s = round(time.time() - launched, 2)
                # Not Keras' "Epoch k/N" headers, nor the metrics JSON that `train` prints last.
                if line and line[0] not in "{} " and not line.startswith("Epoch "):
                    print(f"  [{label}] {line}", flush=True)
            status, wall = child.wait(), time.time() - launched
        finally:  # stopped (Ctrl-C, SIGTERM): no run goes on beside the next frontier
            watchdog.cancel()
            child.kill()
        stderr.seek(0)
        tail = stderr.read()[-3000:] + (f"\n(killed after {limit_s:.0f} s)" if status == -9 else "")
    if status == -9:
        print(f"{label}: killed after {limit_s:.0f} s", file=sys.stderr)
    elif status:
        last_lines = "\n".join(tail.splitlines()[-15:])
        print(f"{label}: FAILED (exit {status}); stderr ends:\n{last_lines}", file=sys.stderr)
    return status, round(wall, 2), result_s, tail


def run_curve(key, seconds, seed, train_limit, tmp):
    """One run of a constant-rate contender up to `seconds`: its whole curve."""
    name, out = f"{CONTENDERS[key]}, seed {seed}", unused_path(tmp, f"{key}-seed{seed}", ".json")
    command = [sys.executable, str(Path(__file__).resolve()), "--child", key]
    command += ["--seconds", f"{seconds:g}", "--seed", str(seed), "--json", str(out)]
    command += ["--train-limit", str(train_limit)] if train_limit else []
    print(f"{name}: epochs up to {clock(seconds)}", flush=True)
    # A point's time is at most its epoch's end, less the tests after earlier epochs, plus one
    # test, so no epoch still running this long after launch can end within the budget. The
    # kill spares the bench an epoch that cannot count (bfloat16 emulated on AVX2: 7.6 min).
    past_budget_s = 1.2 * seconds + 60
    status, wall, _, tail = run_child(command, name, limit_s=past_budget_s)
    curve = json.loads(out.read_text())["curve"] if out.exists() else []
    if not status and not out.exists():
        print(f"{name}: exit 0 but no curve in {out}", file=sys.stderr)
    # By the watchdog (not the kernel's OOM killer): what follows would all be past the budget.
    stopped = status == -9 and wall >= past_budget_s
    print(
        f"{name}: {len(curve)} epoch(s) in {clock(wall)}, "
        + ("stopped past the budget" if stopped else f"exit {status}"),
        flush=True,
    )
    result = {"seed": seed, "command": shlex.join(["python", *command[1:]]), "exit_status": status}
    result.update(stopped_past_budget=stopped, wall_s=wall, up_to_s=seconds)
    return {**result, "stderr_tail": tail if status and not stopped else None, "curve": curve}


def run_project(seconds, seed, preset, overrides, train_limit, tmp):
    """One `fashion-keras train` run with a time budget of `seconds` (and `overrides`,
    `--set` arguments)."""
    label = f"fashion_keras {preset}, {seconds / 60:g} min, seed {seed}"
    output = unused_path(tmp, f"{seconds:g}s-seed{seed}")
    command = [sys.executable, "-m", "fashion_keras.cli", "train", "--config", preset]
    command += ["--set", f"training.time_budget_s={seconds:g}", "--set", f"seed={seed}"]
    command += ["--output", str(output)]
    command += [arg for override in overrides for arg in ("--set", override)]
    command += ["--set", f"data.train_limit={train_limit}"] if train_limit else []
    print(f"{label}: started", flush=True)
    status, wall, result_s, tail = run_child(command, label, limit_s=2 * seconds + 180)
    run = {"budget_s": seconds, "seed": seed, "preset": preset}
    run.update(command=shlex.join(["python", *command[1:]]), exit_status=status, wall_s=wall)
    run.update(result_s=result_s, metrics=None)
    metrics_file = output / "metrics.json"
    if status or not metrics_file.exists() or result_s is None:
        if not status:  # what is missing, so that a bench bug does not read as a failed run
            missing = f"no {metrics_file}" if not metrics_file.exists() else "no test result line"
            print(f"{label}: exit 0 but {missing}", file=sys.stderr)
        return {**run, "stderr_tail": tail}
    metrics = json.loads(metrics_file.read_text())
    keys = ("test_accuracy", "test_loss", "process_wall_time_s", "epochs", "train_images_per_s")
    run["metrics"] = {key: metrics.get(key) for key in keys}
    run["plan"] = metrics.get("plan")
    # What a recipe is chosen on: the validation accuracy of the network the run evaluated
    # (older runs recorded none: their kept epoch's, the same network then).
    run["val_accuracy"] = (
        metrics.get("val_accuracy")
        or (rundir.read_history(output / "history.csv")[-1]["val_accuracy"])
    )
    # The run plans on its own clock (from its process's start); the wall clock here also
    # counts time the machine was not running it, e.g. a paused or snapshotted VM.
    run["clock_gap_s"] = round(result_s - metrics["process_wall_time_s"], 2)
    if run["clock_gap_s"] > CLOCK_GAP_S:
        print(
            f"{label}: the wall clock counted {run['clock_gap_s']:.1f} s more than the run's "
            "own clock (launch, or a pause of the machine: see dmesg); the result keeps the "
            "wall clock's time",
            flush=True,
        )
    print(
        f"{label}: {metrics['test_accuracy']:.4f} at {clock(result_s)} "
        f"(validation {run['val_accuracy']:.4f}; "
        f"{result_s / seconds:.0%} of the budget; exited at {clock(wall)})",
        flush=True,
    )
    return run


# Keeping results: what a stopped frontier has measured is not measured again.
def unused_path(directory, stem, suffix=""):
    """`directory/stem+suffix`, or `stem-2`, `stem-3`, ... if an earlier, stopped attempt
    left it there."""
    attempt, free = 1, directory / f"{stem}{suffix}"
    while free.exists():
        attempt += 1
        free = directory / f"{stem}-{attempt}{suffix}"
    return free


def code_digest():
    """A digest of the package's code and presets and of this bench's."""
    package = Path(fashion_keras.__file__).parent
    paths = sorted([*package.rglob("*.py"), *package.rglob("*.yaml")])
    here = Path(__file__).resolve()
    digest = hashlib.sha256()
    for path in [*paths, here, here.with_name("contenders.py")]:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def setup_of(args):
    """What a result kept from an earlier frontier must share with this one's."""
    return {
        "machine": describe_cpu(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "versions": {p: version(p) for p in VERSIONED},
        "keras_backend": os.environ.get("KERAS_BACKEND"),
        "code": code_digest(),
        "preset": args.preset,
        "overrides": args.overrides,
        "train_limit": args.train_limit,
    }


def setup_dir(runs, setup):
    """The folder of `runs` that keeps this setup's runs and results, `runs/<its digest>`."""
    text = json.dumps(setup, sort_keys=True, indent=2)
    folder = runs / hashlib.sha256(text.encode()).hexdigest()[:12]
    if not (folder / "setup.json").exists():
        files.write_text(folder / "setup.json", text + "\n")
    (folder / "results").mkdir(exist_ok=True)
    return folder


def finished(result):
    """Whether a run's result is worth keeping: not a failed run, to be tried again."""
    if "metrics" in result:  # the project's
        return result["metrics"] is not None
    return result["stopped_past_budget"] or (not result["exit_status"] and result["curve"])


def kept_or_run(path, run, covers=lambda result: True):
    """The result kept at `path` if it `covers` what is asked, else `run()`'s, kept there."""
    if path.exists() and covers(result := json.loads(path.read_text())):
        print(f"kept from an earlier frontier ({result['ended']}): {path}", flush=True)
        return {**result, "kept": True}
    result = {**run(), "ended": datetime.now(UTC).isoformat(timespec="seconds")}
    if finished(result):
        files.write_json(path, result)
    return result


# Reading the results: each contender's figure for each budget, over seeds.
def point_for(result, seconds, seed):
    """One seed's point for a budget: `{"test_accuracy", "seconds", "epochs", ...}`.

    The project: its run for this budget and seed (with the share of the budget it used).
    A curve: its last epoch within the budget, as many as fit (choosing its best epoch would
    take the test set). None: no epoch fits; {"failed": exit status}.
    """
    if "runs" in result:
        run = next(r for r in result["runs"] if (r["budget_s"], r["seed"]) == (seconds, seed))
        if run["metrics"] is None:
            return {"failed": run["exit_status"]}
        return {
            "test_accuracy": run["metrics"]["test_accuracy"],
            "seconds": run["result_s"],
            "epochs": run["metrics"]["epochs"],
            "budget_used": run["result_s"] / seconds,
        }
    curve = next(c for c in result["curves"] if c["seed"] == seed)
    points = [p for p in curve["curve"] if p["seconds"] <= seconds]
    if not points:
        failed = curve["exit_status"] and not curve.get("stopped_past_budget")
        return {"failed": curve["exit_status"]} if failed else None
    last = points[-1]
    return {
        "test_accuracy": last["test_accuracy"],
        "seconds": last["seconds"],
        "epochs": last["epoch"],
    }


def figure_for(result, seconds, seeds):
    """A contender's figure for a budget: the mean and spread over `seeds` of its points.

    None when a seed has no point (no epoch fits); `{"failed": [statuses]}` when one failed.
    """
    points = [point_for(result, seconds, seed) for seed in seeds]
    if failed := [p["failed"] for p in points if p and "failed" in p]:
        return {"failed": failed}
    if None in points:
        return None
    accuracy = [p["test_accuracy"] for p in points]
    figure = {
        "test_accuracy_mean": statistics.mean(accuracy),
        "test_accuracy_std": statistics.stdev(accuracy) if len(accuracy) > 1 else None,
        "test_accuracy": accuracy,
        "seconds_mean": statistics.mean(p["seconds"] for p in points),
        "epochs": [p["epochs"] for p in points],
        "seeds": seeds,
    }
    if "runs" in result:
        used = [p["budget_used"] for p in points]
        preset = next(r["preset"] for r in result["runs"] if r["budget_s"] == seconds)
        figure.update(preset=preset, budget_used=[round(u, 3) for u in used])
    return figure


def frontier(contenders, budgets, args):
    rows = []
    for seconds in budgets:
        row = {"budget_s": seconds}
        for name, result in contenders.items():
            if "skipped" not in result:
                row[name] = figure_for(result, seconds, seeds_for(seconds, args))
        rows.append(row)
    return rows


def cell(figure):
    if figure is None:
        return "no epoch within budget"
    if "failed" in figure:
        return f"failed (exit {', '.join(map(str, figure['failed']))})"
    spread = figure["test_accuracy_std"]
    text = f"{figure['test_accuracy_mean']:.4f}" + (f" ± {spread:.4f}" if spread else "")
    epochs = sorted(set(figure["epochs"]))
    text += f", {'-'.join(f'{e:.3g}' for e in epochs[:: max(1, len(epochs) - 1)])} ep"
    if "preset" in figure:
        used = figure["budget_used"]
        text += f", {figure['preset']}, {min(used):.0%}-{max(used):.0%} of budget"
    return text


def print_table(rows, names):
    print(f"\n| budget | seeds | {' | '.join(names)} |\n| --- | --- |{' --- |' * len(names)}")
    for row in rows:
        cells = [cell(row[name]) if name in row else "skipped" for name in names]
        n = next(
            (len(row[name]["seeds"]) for name in names if (row.get(name) or {}).get("seeds")), 0
        )
        print(f"| {row['budget_s'] / 60:g} min | {n} | {' | '.join(cells)} |")


def plot_frontier(report):
    """Accuracy against wall minutes: each seed's curve as a thin line, the project's runs
    as stars, and each contender's mean per budget as a larger marker."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    colors = dict(zip(report["contenders"], ["black", "C0", "C1", "C2", "C3"], strict=False))
    for name, result in report["contenders"].items():
        for i, curve in enumerate(result.get("curves", [])):
            minutes = [p["seconds"] / 60 for p in curve["curve"]]
            accuracy = [p["test_accuracy"] for p in curve["curve"]]
            label = name if i == 0 else None
            ax.plot(minutes, accuracy, color=colors[name], lw=0.8, alpha=0.6, label=label)
        runs = [r for r in result.get("runs", []) if r["metrics"]]
        if runs:
            minutes = [r["result_s"] / 60 for r in runs]
            accuracy = [r["metrics"]["test_accuracy"] for r in runs]
            label = f"{name} (a run per budget and seed)"
            ax.scatter(minutes, accuracy, s=60, marker="*", color="black", zorder=3, label=label)
    for row in report["frontier"]:
        for name, figure in row.items():
            if isinstance(figure, dict) and "test_accuracy_mean" in figure:
                ax.scatter(
                    figure["seconds_mean"] / 60,
                    figure["test_accuracy_mean"],
                    s=90,
                    marker="D",
                    facecolor="none",
                    edgecolor=colors[name],
                    zorder=4,
                )
    budgets = [s / 60 for s in report["setup"]["budgets_s"]]
    for minutes in budgets:
        ax.axvline(minutes, linestyle=":", color="gray")
    ax.set_xscale("log")
    ax.set_xticks(budgets, [f"{m:g} min" for m in budgets])
    ax.set_xlabel("wall time from launch to the test result (log scale); ◇ mean over seeds")
    ax.set_ylabel("test accuracy")
    ax.set_title(report["machine"].rsplit(", ", 1)[0], fontsize=9)  # without the platform
    ax.grid(alpha=0.3)
    ax.tick_params(axis="x", which="minor", labelbottom=False)
    if ax.get_legend_handles_labels()[0]:  # none when every contender failed
        ax.legend(fontsize=8)
    return fig


def version(package):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", default="1,5,30", help="minutes (default 1,5,30)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per budget (default 3)")
    parser.add_argument(
        "--long-seeds", type=int, default=2, help="seeds per budget from 30 minutes (default 2)"
    )
    parser.add_argument("--contenders", default=",".join(CONTENDERS), help="default: all")
    parser.add_argument("--preset", help="the project's preset for every budget")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help="a config override for every project run; repeatable",
    )
    parser.add_argument("--train-limit", type=int, metavar="N", help="class-balanced subset")
    parser.add_argument(
        "--runs",
        default="runs/frontier",
        metavar="DIR",
        help="the runs and their results, kept for a rerun (default runs/frontier)",
    )
    parser.add_argument("--json", default="bench/frontier.json", metavar="OUT")
    parser.add_argument("--plot", default="bench/frontier.png", metavar="OUT.png")
    parser.add_argument(
        "--child", choices=["keras", "keras-bf16", "pytorch"], help=argparse.SUPPRESS
    )
    parser.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=SEED, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        budgets = sorted({60 * float(minutes) for minutes in args.budgets.split(",")})
    except ValueError:
        budgets = [0]
    if budgets[0] <= 0:
        parser.error(f"--budgets takes positive minutes, e.g. 1,5,30. Received: {args.budgets!r}")
    args.budgets = budgets
    if min(args.seeds, args.long_seeds) < 1:
        parser.error(
            "--seeds and --long-seeds must be at least 1. "
            f"Received: {args.seeds}, {args.long_seeds}"
        )
    args.contenders = args.contenders.split(",")
    if unknown := set(args.contenders) - set(CONTENDERS):
        parser.error(f"Unknown contenders {sorted(unknown)}. Available: {', '.join(CONTENDERS)}")
    if args.train_limit is not None and args.train_limit < 10:
        parser.error(f"--train-limit must be at least 10. Received: {args.train_limit}")
    if "project" in args.contenders:  # here, not after 90 minutes of runs
        from fashion_keras.config import list_presets, load_config
        from fashion_keras.errors import UserError

        if args.preset and args.preset not in list_presets():
            parser.error(f"Unknown preset {args.preset!r}. Available: {', '.join(list_presets())}")
        try:
            for seconds in budgets:
                load_config(args.preset or preset_for(seconds), args.overrides)
        except UserError as error:
            parser.error(f"--set: {error}")
    return args


def project_runs(args, runs, results):
    """The project's run for each budget and seed, kept or run now."""
    return [
        kept_or_run(
            results / f"project-{s:g}s-seed{seed}.json",
            lambda s=s, seed=seed: run_project(
                s, seed, args.preset or preset_for(s), args.overrides, args.train_limit, runs
            ),
        )
        for s in args.budgets
        for seed in seeds_for(s, args)
    ]


def curves(key, args, runs, results):
    """A constant-rate contender's curve for each seed, up to the largest budget that needs
    the seed, kept or run now."""
    longest = {seed: s for s in args.budgets for seed in seeds_for(s, args)}
    return [
        kept_or_run(
            results / f"{key}-seed{seed}.json",
            lambda s=s, seed=seed: run_curve(key, s, seed, args.train_limit, runs),
            covers=lambda curve, s=s: curve["up_to_s"] >= s,
        )
        for seed, s in longest.items()
    ]


def measure(args, folder):
    """Every contender's runs, kept in `folder` or run now."""
    contenders = {}
    for key in args.contenders:
        name = CONTENDERS[key]
        if key == "project":
            contenders[name] = {"runs": project_runs(args, folder, folder / "results")}
        elif key == "pytorch" and importlib.util.find_spec("torch") is None:
            print(f"{name}: skipped, torch is not installed (pip install torch)", flush=True)
            contenders[name] = {"skipped": "torch is not installed"}
        else:
            contenders[name] = {"curves": curves(key, args, folder, folder / "results")}
    return contenders


def runs_of(contender):
    """A contender's results: the project's runs or a naive contender's curves."""
    return contender.get("runs") or contender.get("curves") or []


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.child:
        return run_naive_child(args)
    line = f"CPU: {describe_cpu()}, {platform.platform()}"
    print(f"{line}\nbudgets: {', '.join(f'{s / 60:g}' for s in args.budgets)} minutes\n")

    # Absolute, because the contenders run from the repository root and a relative --runs
    # means the caller's.
    folder = setup_dir(Path(args.runs).resolve(), setup := setup_of(args))
    print(f"runs and their results: {folder}\n", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the run under way stops too
    try:
        with rundir.claim(folder):  # the folder exists: its lock is all that can fail
            contenders = measure(args, folder)
    except rundir.RunError:
        sys.exit(f"frontier: another frontier is measuring in {folder}; wait for it to end")

    report = {
        "machine": line,
        "isa": isa_flags(),
        "cores": os.cpu_count(),
        "versions": setup["versions"],
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join(["python", sys.argv[0], *argv]),
        "results_setup": setup,  # what kept results share (see setup_of)
        "setup": {
            "budgets_s": args.budgets,
            "train_limit": args.train_limit,
            "batch_size": BATCH_SIZE,
            "learning_rate": LEARNING_RATE,
            "seeds": args.seeds,
            "long_seeds": args.long_seeds,
            "overrides": args.overrides,
        },
        "contenders": contenders,
        "frontier": frontier(contenders, args.budgets, args),
    }
    print_table(report["frontier"], [CONTENDERS[key] for key in args.contenders])
    if kept := [r["ended"] for c in contenders.values() for r in runs_of(c) if r.get("kept")]:
        print(
            f"\n{len(kept)} result(s) kept from earlier frontiers, ended {min(kept)} to {max(kept)}"
        )
    files.write_text(args.json, json.dumps(report, indent=2) + "\n")
    with files.atomic_path(args.plot) as part:
        plot_frontier(report).savefig(part, dpi=120, format="png")
    print(f"\nwrote {args.json} and {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
