"""Frontier: the test accuracy each contender reaches in 1, 5 and 30 minutes, start-up included.

Each contender runs as its own Python process, so its clock starts before Python and its
framework load, as a user's does:

- fashion_keras: `fashion-keras train --config PRESET --set training.time_budget_s=S`, one run
  per budget; its point is (wall time from launch to exit, the test accuracy it reports).
- naive Keras: the tutorial network in plain `keras.Sequential`, Adam 1e-3, batch 128, float32,
  one `fit(epochs=1)` after another at a constant learning rate.
- PyTorch eager: the same recipe as a plain PyTorch loop (skipped without torch installed).

The two constant-rate contenders run once, up to the largest budget, and are tested after every
epoch: that gives their whole curve, and a budget's figure is the last epoch that fits in it.

    python bench/frontier.py [--budgets 1,5,30] [--contenders project,keras,pytorch]
        [--preset NAME] [--train-limit N] [--json OUT] [--plot OUT.png]

The defaults take about 100 minutes (36 for the project's runs, 30-odd for each curve). Prints a
table and writes JSON and a plot. Not part of the tests.
"""

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from fashion_keras import files
from fashion_keras.machine import ISA_FLAGS, cpu_flags, describe_cpu, seconds_since_process_start

from contenders import keras_tutorial_model, torch_tutorial_net

REPO = Path(__file__).resolve().parents[1]
BATCH_SIZE = 128
LEARNING_RATE = 1e-3
SEED = 42
# The project's preset for each budget in seconds; other budgets: "fast" under 2 minutes,
# "improved" from there (override with --preset).
PRESETS = {60: "fast", 300: "improved", 1800: "improved"}
CONTENDERS = {"project": "fashion_keras", "keras": "naive Keras", "pytorch": "PyTorch eager"}


def preset_for(seconds):
    return PRESETS.get(round(seconds), "fast" if seconds < 120 else "improved")


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


def naive_keras(x, y, x_test, y_test, seconds, out):
    """The tutorial recipe as most people would write it in Keras."""
    import keras

    keras.utils.set_random_seed(SEED)
    model = keras_tutorial_model()
    follow_curve(
        lambda: model.fit(x, y, batch_size=BATCH_SIZE, epochs=1, shuffle=True, verbose=0),
        lambda: model.evaluate(x_test, y_test, verbose=0),  # Keras' default batch, as naive
        seconds,
        out,
    )


def pytorch_eager(x, y, x_test, y_test, seconds, out):
    """The same recipe as a plain PyTorch loop (with PyTorch's default initialisation)."""
    import torch
    from torch import nn

    torch.manual_seed(SEED)
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
    contender = naive_keras if args.child == "keras" else pytorch_eager
    contender(x, y, x_test, y_test, args.seconds, args.json)


# The bench: launch each contender, echo its progress, collect its points.
def run_child(command, label, limit_s):
    """Runs `command` from the repository root, echoing its progress lines after `[label]`.

    Returns (exit status, wall seconds from launch to exit, the end of its stderr). A child
    still running after `limit_s` is killed.
    """
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryFile("w+") as stderr:
        env["FRONTIER_LAUNCHED"] = repr(launched := time.time())
        child = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=stderr)
        watchdog = threading.Timer(limit_s, child.kill)
        watchdog.start()
        for line in child.stdout:
            line = line.decode(errors="replace").rstrip()
            # Not Keras' "Epoch k/N" headers, nor the metrics JSON that `train` prints last.
            if line and line[0] not in "{} " and not line.startswith("Epoch "):
                print(f"  [{label}] {line}", flush=True)
        status, wall = child.wait(), time.time() - launched
        watchdog.cancel()
        stderr.seek(0)
        tail = stderr.read()[-3000:] + (f"\n(killed after {limit_s:.0f} s)" if status == -9 else "")
    if status:
        last_lines = "\n".join(tail.splitlines()[-15:])
        print(f"{label}: FAILED (exit {status}); stderr ends:\n{last_lines}", file=sys.stderr)
    return status, round(wall, 2), tail


def run_curve(key, seconds, train_limit, tmp):
    """One run of a constant-rate contender up to `seconds`: its whole curve."""
    name, out = CONTENDERS[key], Path(tmp) / f"{key}.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--child", key]
    command += ["--seconds", f"{seconds:g}", "--json", str(out)]
    command += ["--train-limit", str(train_limit)] if train_limit else []
    print(f"{name}: epochs up to {clock(seconds)}", flush=True)
    status, wall, tail = run_child(command, name, limit_s=2 * seconds + 180)
    curve = json.loads(out.read_text())["curve"] if out.exists() else []
    print(f"{name}: {len(curve)} epoch(s) in {clock(wall)}, exit {status}", flush=True)
    result = {"command": shlex.join(["python", *command[1:]]), "exit_status": status}
    return {**result, "wall_s": wall, "stderr_tail": tail if status else None, "curve": curve}


def run_project(seconds, preset, train_limit, tmp):
    """One `fashion-keras train` run with a time budget of `seconds`."""
    label, output = f"fashion_keras {preset}, {seconds / 60:g} min", Path(tmp) / f"{seconds:g}s"
    command = [sys.executable, "-m", "fashion_keras.cli", "train", "--config", preset]
    command += ["--set", f"training.time_budget_s={seconds:g}", "--output", str(output)]
    command += ["--set", f"data.train_limit={train_limit}"] if train_limit else []
    print(f"{label}: started", flush=True)
    status, wall, tail = run_child(command, label, limit_s=2 * seconds + 180)
    run = {"budget_s": seconds, "preset": preset, "command": shlex.join(["python", *command[1:]])}
    run.update(exit_status=status, wall_s=wall, within_budget=wall <= seconds, metrics=None)
    metrics_file = output / "metrics.json"
    if status or not metrics_file.exists():
        return {**run, "stderr_tail": tail}
    metrics = json.loads(metrics_file.read_text())
    keys = ("test_accuracy", "test_loss", "process_wall_time_s", "epochs")
    run["metrics"] = {key: metrics.get(key) for key in keys}
    print(f"{label}: {metrics['test_accuracy']:.4f} in {clock(wall)}", flush=True)
    return run


# Reading the results: each contender's figure for each budget.
def figure_for(result, seconds):
    """A contender's test accuracy for a budget, when it reached it and in how many epochs.

    For a curve: its last epoch within the budget, as many as fit (the best epoch is noted, but
    choosing it would take the test set). None: no epoch fits; {"failed": exit status}.
    """
    if "runs" in result:  # the project: its run for this budget
        run = next(r for r in result["runs"] if r["budget_s"] == seconds)
        if run["metrics"] is None:
            return {"failed": run["exit_status"]}
        return {
            "test_accuracy": run["metrics"]["test_accuracy"],
            "seconds": run["wall_s"],
            "epochs": run["metrics"]["epochs"],
            "preset": run["preset"],
            "within_budget": run["within_budget"],
        }
    points = [p for p in result["curve"] if p["seconds"] <= seconds]
    if not points:
        return {"failed": result["exit_status"]} if result["exit_status"] else None
    last, best = points[-1], max(points, key=lambda p: p["test_accuracy"])
    return {
        "test_accuracy": last["test_accuracy"],
        "seconds": last["seconds"],
        "epochs": last["epoch"],
        "best_test_accuracy": best["test_accuracy"],
        "best_epoch": best["epoch"],
    }


def frontier(contenders, budgets):
    rows = []
    for seconds in budgets:
        row = {"budget_s": seconds}
        for name, result in contenders.items():
            if "skipped" not in result:
                row[name] = figure_for(result, seconds)
        rows.append(row)
    return rows


def cell(figure):
    if figure is None:
        return "no epoch within budget"
    if "failed" in figure:
        return f"failed (exit {figure['failed']})"
    text = f"{figure['test_accuracy']:.4f} at {clock(figure['seconds'])}, {figure['epochs']} ep"
    if "preset" in figure:
        return text + f", {figure['preset']}" + ("" if figure["within_budget"] else ", OVER")
    if figure["best_test_accuracy"] > figure["test_accuracy"]:
        text += f" (best {figure['best_test_accuracy']:.4f}, ep {figure['best_epoch']})"
    return text


def print_table(rows, names):
    print(f"\n| budget | {' | '.join(names)} |\n| ------ |{' --- |' * len(names)}")
    for row in rows:
        cells = [cell(row[name]) if name in row else "skipped" for name in names]
        print(f"| {row['budget_s'] / 60:g} min | {' | '.join(cells)} |")


def plot_frontier(report):
    """Accuracy against wall minutes: curves as lines, the project's runs as stars."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    for name, result in report["contenders"].items():
        if result.get("curve"):
            minutes = [p["seconds"] / 60 for p in result["curve"]]
            accuracy = [p["test_accuracy"] for p in result["curve"]]
            ax.plot(minutes, accuracy, marker="o", markersize=3, label=name)
        runs = [r for r in result.get("runs", []) if r["metrics"]]
        if runs:
            minutes = [r["wall_s"] / 60 for r in runs]
            accuracy = [r["metrics"]["test_accuracy"] for r in runs]
            label = f"{name} (a run per budget)"
            ax.scatter(minutes, accuracy, s=150, marker="*", color="black", zorder=3, label=label)
            for m, a, r in zip(minutes, accuracy, runs, strict=True):
                ax.annotate(r["preset"], (m, a), xytext=(6, -12), textcoords="offset points")
    budgets = [s / 60 for s in report["setup"]["budgets_s"]]
    for minutes in budgets:
        ax.axvline(minutes, linestyle=":", color="gray")
    ax.set_xscale("log")
    ax.set_xticks(budgets, [f"{m:g} min" for m in budgets])
    ax.set_xlabel("wall time from launch, start-up included (log scale)")
    ax.set_ylabel("test accuracy")
    ax.set_title(report["machine"].rsplit(", ", 1)[0], fontsize=9)  # without the platform
    ax.grid(alpha=0.3)
    ax.tick_params(axis="x", which="minor", labelbottom=False)
    if ax.get_legend_handles_labels()[0]:  # none when every contender failed
        ax.legend()
    return fig


def version(package):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", default="1,5,30", help="minutes (default 1,5,30)")
    parser.add_argument("--contenders", default=",".join(CONTENDERS), help="default: all")
    parser.add_argument("--preset", help="the project's preset for every budget")
    parser.add_argument("--train-limit", type=int, metavar="N", help="class-balanced subset")
    parser.add_argument("--runs", metavar="DIR", help="keep the project's run directories here")
    parser.add_argument("--json", default="bench/frontier.json", metavar="OUT")
    parser.add_argument("--plot", default="bench/frontier.png", metavar="OUT.png")
    parser.add_argument("--child", choices=["keras", "pytorch"], help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        budgets = sorted({60 * float(minutes) for minutes in args.budgets.split(",")})
    except ValueError:
        budgets = [0]
    if budgets[0] <= 0:
        parser.error(f"--budgets takes positive minutes, e.g. 1,5,30. Received: {args.budgets!r}")
    args.budgets = budgets
    args.contenders = args.contenders.split(",")
    if unknown := set(args.contenders) - set(CONTENDERS):
        parser.error(f"Unknown contenders {sorted(unknown)}. Available: {', '.join(CONTENDERS)}")
    if args.train_limit is not None and args.train_limit < 10:
        parser.error(f"--train-limit must be at least 10. Received: {args.train_limit}")
    if args.preset and "project" in args.contenders:
        from fashion_keras.config import list_presets  # here, not before 90 minutes of runs

        if args.preset not in list_presets():
            parser.error(f"Unknown preset {args.preset!r}. Available: {', '.join(list_presets())}")
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.child:
        return run_naive_child(args)
    line = f"CPU: {describe_cpu()}, {platform.platform()}"
    print(f"{line}\nbudgets: {', '.join(f'{s / 60:g}' for s in args.budgets)} minutes\n")

    contenders = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = args.runs or tmp  # where the runs go: kept with --runs, else removed at the end
        for key in args.contenders:
            name = CONTENDERS[key]
            if key == "project":
                runs = [
                    run_project(s, args.preset or preset_for(s), args.train_limit, tmp)
                    for s in args.budgets
                ]
                contenders[name] = {"runs": runs}
            elif key == "pytorch" and importlib.util.find_spec("torch") is None:
                print(f"{name}: skipped, torch is not installed (pip install torch)", flush=True)
                contenders[name] = {"skipped": "torch is not installed"}
            else:
                contenders[name] = run_curve(key, args.budgets[-1], args.train_limit, tmp)

    report = {
        "machine": line,
        "isa": [flag for flag in ISA_FLAGS if flag in cpu_flags()],
        "cores": os.cpu_count(),
        "versions": {p: version(p) for p in ("tensorflow", "keras", "torch", "numpy")},
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join(["python", sys.argv[0], *argv]),
        "setup": {
            "budgets_s": args.budgets,
            "train_limit": args.train_limit,
            "batch_size": BATCH_SIZE,
            "learning_rate": LEARNING_RATE,
            "seed": SEED,
        },
        "contenders": contenders,
        "frontier": frontier(contenders, args.budgets),
    }
    print_table(report["frontier"], [CONTENDERS[key] for key in args.contenders])
    files.write_text(args.json, json.dumps(report, indent=2) + "\n")
    with files.atomic_path(args.plot) as part:
        plot_frontier(report).savefig(part, dpi=120, format="png")
    print(f"\nwrote {args.json} and {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
