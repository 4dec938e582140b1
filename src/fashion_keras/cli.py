"""The `fashion-keras` command: parses arguments, calls the library, prints the outcome.

A user's mistake (`fashion_keras.errors.UserError`) is one line on stderr and exit status 2.
Anything else is unexpected: one line that says so, exit status 1, and the traceback with
FASHION_KERAS_DEBUG=1. `predict` exits with status 3 when some input files could not be read.
TensorFlow's start-up notices are left out of stderr (`fashion_keras.quiet`) unless
`--verbose` or FASHION_KERAS_VERBOSE=1.
"""

import argparse
import json
import os
import sys

from fashion_keras import __version__, errors, quiet
from fashion_keras.errors import UserError, interrupt_status

EXAMPLES = """\
examples:
  fashion-keras presets
  fashion-keras train --config baseline
  fashion-keras train --config improved --set training.time_budget_s=300
  fashion-keras train --config dropout --set training.epochs=3 --output runs/try
  fashion-keras evaluate runs/try
  fashion-keras export runs/try --format onnx
  fashion-keras report runs/baseline
  fashion-keras compare runs/baseline runs/dropout --output runs/comparison
  fashion-keras predict --model runs/baseline/model.keras shirt.png batch.npy
  fashion-keras predict --model runs/dropout/model.keras --mc-samples 30 shirt.png
  fashion-keras predict --model runs/baseline/model.keras --temperature run shirt.png
  fashion-keras predict --model runs/seed1/model.keras --model runs/seed2/model.keras shirt.png
  fashion-keras study --quick --output runs/study-quick
  fashion-keras methods --quick --output runs/methods-quick
  fashion-keras data --check
"""


def _train(args):
    from fashion_keras.config import load_config

    config = load_config(args.config, args.set)  # mistakes show before TensorFlow loads
    from fashion_keras.machine import seconds_since_process_start
    from fashion_keras.train import TrainingInterrupted, train

    try:
        # The command's budget counts from process start: all the user waits for.
        result = train(
            config, output=args.output, data_dir=args.data_dir, clock=seconds_since_process_start
        )
    except TrainingInterrupted as e:
        print(f"fashion-keras: {e}", file=sys.stderr)
        return e.exit_status
    print(json.dumps(result.metrics, indent=2))


def _evaluate(args):
    from fashion_keras.rundir import evaluate_run

    print(
        json.dumps(
            evaluate_run(args.run_dir, data_dir=args.data_dir, checkpoint=args.checkpoint), indent=2
        )
    )


def _export(args):
    from fashion_keras.export import TOLERANCE, export_run

    done = export_run(
        args.run_dir,
        args.format,
        output=args.output,
        checkpoint=args.checkpoint,
        images=args.images,
        data_dir=args.data_dir,
    )
    parity = done.parity
    print(
        f"Wrote {done.path} ({done.format}, {done.bytes / 1e6:.1f} MB). On {parity.images:,} test "
        f"images it gives Keras' class for {parity.same_class:,}; the largest difference of a "
        f"class probability is {parity.max_difference:.1e} (allowed {TOLERANCE:.0e})."
    )


def _presets(args):
    from fashion_keras.config import list_presets

    presets = list_presets()
    width = max(map(len, presets))
    for name, description in presets.items():
        print(f"{name:<{width}}  {description}")


def _data(args):
    from fashion_keras import data

    directory, source = data.find_data_dir(args.data_dir, download=not args.no_download)
    print(f"Fashion-MNIST files: {directory} ({source})")
    if args.check:
        for spec in data.FILES.values():
            array = data.read_idx(directory / spec.filename, spec)
            print(f"  {spec.filename}: {array.shape[0]} items, SHA-256 OK")


def _report(args):
    from fashion_keras.report import write_report

    print(write_report(args.run_dir, data_dir=args.data_dir, mc_samples=args.mc_samples))


def _compare(args):
    from fashion_keras.compare import write_comparison

    print(
        write_comparison(
            args.run_dirs, args.output, mc_samples=args.mc_samples, data_dir=args.data_dir
        )
    )


def _study(args):
    from fashion_keras import study

    grid = study.QUICK if args.quick else study.DEFAULT
    return _run_then_write("study", study.run_study, study.write_study, grid, args)


def _methods(args):
    import dataclasses

    from fashion_keras import methods

    grid = methods.QUICK if args.quick else methods.DEFAULT
    if args.train_limit:
        grid = dataclasses.replace(grid, train_limit=args.train_limit)
    return _run_then_write("methods", methods.run_methods, methods.write_methods, grid, args)


def _run_then_write(name, run, write, grid, args):
    """A grid of runs (the study, the methods comparison): train what is unfinished, then
    write the page; a stopped grid says how to continue."""
    from fashion_keras.train import TrainingInterrupted

    try:
        run(args.output, grid, data_dir=args.data_dir)
    except TrainingInterrupted as e:
        print(f"fashion-keras: {name} stopped; run the same command to continue", file=sys.stderr)
        return e.exit_status
    print(write(args.output, grid, data_dir=args.data_dir, docs=args.docs))


def _predict(args):
    from fashion_keras.predict import predict_files

    results = predict_files(
        args.model,
        args.inputs,
        top=args.top,
        mc_samples=args.mc_samples,
        temperature=args.temperature,
    )
    if args.json:
        print(json.dumps(results, indent=2))
    for r in results:
        if "error" in r:
            print(f"fashion-keras: error: {r['file']}: {r['error']}", file=sys.stderr)
        elif not args.json:
            npy = r["file"].lower().endswith(".npy")
            label = r["file"] + (f"[{r['index']}]" if npy else "")
            line = label + ": " + ", ".join(f"{name} {p:.1%}" for name, p in r["top"])
            sure = f"entropy {r['entropy']:.3f}"
            if "mutual_information" in r:
                sure += f", mutual information {r['mutual_information']:.3f}"
            print(f"{line} ({sure})")
    return 3 if any("error" in r for r in results) else 0  # 1 and 2 mean what main() says


def _add_data_dir(parser):
    parser.add_argument(
        "--data-dir", metavar="DIR", help="directory with the four Fashion-MNIST .gz files"
    )


def at_least(minimum, at_most=None):
    """An argparse type: a whole number of at least `minimum` (`checks.check_int`), and at
    most `at_most` if given, with argparse's wording, since argparse names the option itself."""
    from fashion_keras.checks import check_int

    wanted = f">= {minimum}" if at_most is None else f"from {minimum} to {at_most}"

    def parse(text):
        try:
            value = check_int("value", int(text), minimum)
            if at_most is not None and value > at_most:
                raise ValueError
        except ValueError:  # not a number, or a UserError from check_int
            raise argparse.ArgumentTypeError(
                f"expected a whole number {wanted}, got {text!r}"
            ) from None
        return value

    return parse


def positive_number(text):
    """An argparse type: a finite number above 0 (`checks.check_positive`)."""
    from fashion_keras.checks import check_positive

    try:
        return check_positive("value", float(text))
    except ValueError:  # not a number, or a UserError from check_positive
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None


def temperature_option(text):
    """An argparse type: a number above 0, or `run` (the run's fitted temperature)."""
    if text == "run":
        return text
    try:
        return positive_number(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a number > 0 or 'run', got {text!r}") from None


MC_HELP = "Monte Carlo dropout passes for the uncertainty sections (default 30)"

PREDICT_HELP = """\
Images are converted to grayscale (8- or 16-bit; 32-bit and float images are refused)
and resized to 28x28 when they are not 28x28 already; pixels are scaled to [0, 1] and not
inverted (Fashion-MNIST shows light garments on a dark background). .npy files must hold
28x28 images shaped (28, 28), (28, 28, 1), (N, 28, 28) or (N, 28, 28, 1) as uint8 or
floats in [0, 1]; they are never resized and are read without pickle. A file that cannot
be read is reported on stderr and the others are still predicted; the exit status is then 3.
Models load in Keras' safe mode.

Uncertainty: entropy is always reported. --mc-samples N averages N Monte Carlo dropout
passes; --model given several times averages an ensemble of models. Both also report
mutual information, the disagreement between the passes or the models. --temperature T
divides one model's logits by T before the softmax (temperature scaling: T > 1 softens an
overconfident model; --temperature run takes the T that training fitted on the validation
split, from the run's metrics.json, for its model.keras); it goes with one --model and no
--mc-samples.
"""


def build_parser():
    parser = argparse.ArgumentParser(
        prog="fashion-keras",
        description="Train, evaluate and inspect the tutorial CNN on Fashion-MNIST (Keras 3).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show TensorFlow's start-up notices on stderr (no CUDA, CPU features, oneDNN), "
        "hidden by default; also FASHION_KERAS_VERBOSE=1",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a model and write a run directory")
    p.add_argument(
        "--config",
        required=True,
        metavar="PRESET|FILE",
        help="a preset (see `fashion-keras presets`) or a YAML file, e.g. RUN/config.yaml",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set training.epochs=3 (repeatable)",
    )
    p.add_argument(
        "--output",
        metavar="DIR",
        help="run directory (default runs/<name>-<timestamp>); rerun with the same DIR to resume",
    )
    _add_data_dir(p)
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="evaluate a run's saved model on the test set")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument(
        "--checkpoint",
        default="model.keras",
        help="model file in RUN_DIR (default model.keras; or best.keras)",
    )
    _add_data_dir(p)
    p.set_defaults(func=_evaluate)

    p = sub.add_parser(
        "export",
        help="export a run's model (SavedModel, ONNX or LiteRT), checked against Keras",
        description="Writes the model's inference pass in float32 and publishes it only if, "
        "on the first test images, its runtime (TensorFlow's serving signature, ONNX Runtime "
        "or the LiteRT interpreter) agrees with Keras. Needs the export extra: "
        'pip install ".[export]" in the project folder (make install has it).',
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--format", required=True, choices=["savedmodel", "onnx", "litert"])
    p.add_argument(
        "--output",
        metavar="PATH",
        help="default RUN_DIR/export/savedmodel, model.onnx or model.tflite",
    )
    p.add_argument(
        "--checkpoint", default="model.keras", help="model file in RUN_DIR (default model.keras)"
    )
    p.add_argument(
        "--images",
        type=at_least(1),
        default=1000,
        metavar="N",
        help="test images to compare the export with Keras on (default 1000)",
    )
    _add_data_dir(p)
    p.set_defaults(func=_export)

    p = sub.add_parser(
        "report", help="write RUN_DIR/report/ (curves, samples, metrics, index.html)"
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--mc-samples", type=at_least(1), default=30, metavar="N", help=MC_HELP)
    _add_data_dir(p)
    p.set_defaults(func=_report)

    p = sub.add_parser(
        "compare", help="compare runs: overlaid curves, gap, verdicts, seed statistics"
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--mc-samples", type=at_least(1), default=30, metavar="N", help=MC_HELP)
    p.add_argument(
        "--output", default="runs/comparison", metavar="DIR", help="default runs/comparison"
    )
    _add_data_dir(p)
    p.set_defaults(func=_compare)

    p = sub.add_parser(
        "study",
        help="the dropout study: dropout strength x data size x seeds, then its page",
        description="Trains every unfinished run of the grid (a rerun continues a stopped "
        "study), then writes OUTPUT/index.html. The default grid takes about two hours on "
        "2 CPU cores.",
    )
    p.add_argument("--output", default="runs/study", metavar="DIR", help="default runs/study")
    p.add_argument("--quick", action="store_true", help="a tiny grid that runs in a minute")
    p.add_argument("--docs", metavar="DIR", help="also copy summary.json and the figure here")
    _add_data_dir(p)
    p.set_defaults(func=_study)

    p = sub.add_parser(
        "methods",
        help="what dropout buys: plain softmax, temperature scaling, MC dropout, deep ensemble",
        description="Trains every unfinished run the comparison needs (plain and dropout models "
        "per seed, the ensemble's other members; a rerun continues a stopped comparison), then "
        "scores each method on the same test set and under shift and writes OUTPUT/index.html. "
        "The default grid trains 8 models of 15 epochs on 55,000 images, 120 epochs in all: "
        "an estimated half hour on the 2-core Xeon of the study (bfloat16), about two hours "
        "on a 2-core AVX2 CPU in float32 (1 h 55 min measured, 2026-12-02).",
    )
    p.add_argument("--output", default="runs/methods", metavar="DIR", help="default runs/methods")
    p.add_argument(
        "--quick", action="store_true", help="a tiny grid that runs in about two minutes"
    )
    p.add_argument(
        "--train-limit",
        type=at_least(10, at_most=55000),  # one image per class, at most the training set
        metavar="N",
        help="train every model on N images (default all; --quick: 1000); use its own --output",
    )
    p.add_argument("--docs", metavar="DIR", help="also copy summary.json and the figure here")
    _add_data_dir(p)
    p.set_defaults(func=_methods)

    p = sub.add_parser(
        "predict",
        help="class probabilities for images or .npy batches",
        description=PREDICT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model",
        required=True,
        action="append",
        metavar="PATH",
        help="a .keras file, e.g. runs/baseline/model.keras, or a run directory (its "
        "model.keras); repeat it for an ensemble "
        "(the mean of the models' probabilities, with their mutual information)",
    )
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_NPY")
    p.add_argument("--top", type=int, default=3, help="classes to show per image (default 3)")
    p.add_argument(
        "--mc-samples",
        type=at_least(0),
        default=0,
        metavar="N",
        help="average N Monte Carlo dropout passes and report their uncertainty (models with "
        "dropout; default 0: one ordinary prediction)",
    )
    p.add_argument(
        "--temperature",
        type=temperature_option,
        metavar="T",
        help="divide the logits by T before the softmax (temperature scaling; one model, "
        "no --mc-samples); 'run': the T training fitted on the validation split",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    p.set_defaults(func=_predict)

    p = sub.add_parser("presets", help="list the presets shipped with the package")
    p.set_defaults(func=_presets)

    p = sub.add_parser("data", help="find (or download) the data and say where it is")
    p.add_argument("--check", action="store_true", help="also verify every file's SHA-256")
    p.add_argument("--data-dir", metavar="DIR", help="use this directory instead of searching")
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading")
    p.set_defaults(func=_data)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    verbose = args.verbose or os.environ.get("FASHION_KERAS_VERBOSE", "0") not in ("", "0")
    # Whoever asks TensorFlow for its own logs wants them all, unfiltered and unbuffered.
    verbose = verbose or os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2") in ("0", "1")
    verbose = verbose or "TF_CPP_MAX_VLOG_LEVEL" in os.environ
    # Only the command itself filters fd 2; main(argv) called from Python leaves it alone.
    filtered = argv is None and not verbose and quiet.install()
    try:
        return _main(args)
    finally:
        if filtered:
            quiet.uninstall()


def _main(args):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ chatter out
    os.environ.setdefault("MPLBACKEND", "Agg")  # plots go to files, never to a window
    # A `kill` stops training like Ctrl-C: cleanly, with the backup kept for resuming.
    errors.handle_signals()
    try:
        status = args.func(args)
    except KeyboardInterrupt as e:
        print("fashion-keras: interrupted", file=sys.stderr)
        return interrupt_status(e)
    except Exception as e:
        if os.environ.get("FASHION_KERAS_DEBUG"):
            raise
        message = str(e).splitlines()[0] if str(e) else ""
        if isinstance(e, UserError):
            print(f"fashion-keras: error: {message}", file=sys.stderr)
            return 2
        print(
            f"fashion-keras: unexpected error: {type(e).__name__}: {message} (rerun with "
            "FASHION_KERAS_DEBUG=1 to see the traceback)",
            file=sys.stderr,
        )
        return 1
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
