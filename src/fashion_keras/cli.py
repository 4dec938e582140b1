"""The `fashion-keras` command: parses arguments, calls the library, prints the outcome.

A user's mistake is one line on stderr and exit status 2; set FASHION_KERAS_DEBUG=1 to see
the traceback instead.
"""

import argparse
import json
import os
import signal
import sys

EXAMPLES = """\
examples:
  fashion-keras train --config configs/baseline.yaml
  fashion-keras train --config configs/dropout.yaml --set training.epochs=3 --output runs/try
  fashion-keras evaluate runs/try
  fashion-keras data --check
"""


def _train(args):
    from fashion_keras.config import load_config
    from fashion_keras.train import train

    overrides = list(args.set)
    if args.data_dir:
        overrides.append(f"data.data_dir={args.data_dir}")
    config = load_config(args.config, overrides)
    result = train(config, output=args.output)
    print(json.dumps(result.metrics, indent=2))


def _evaluate(args):
    from fashion_keras.train import evaluate_run

    print(
        json.dumps(
            evaluate_run(args.run_dir, data_dir=args.data_dir, checkpoint=args.checkpoint), indent=2
        )
    )


def _data(args):
    from fashion_keras import data

    directory, source = data.find_data_dir(args.data_dir, download=not args.no_download)
    print(f"Fashion-MNIST files: {directory} ({source})")
    if args.check:
        for spec in data.FILES.values():
            array = data.read_idx(directory / spec.filename, spec)
            print(f"  {spec.filename}: {array.shape[0]} items, SHA-256 OK")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="fashion-keras",
        description="Train, evaluate and inspect the tutorial CNN on Fashion-MNIST (Keras 3).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a model and write a run directory")
    p.add_argument(
        "--config", required=True, metavar="FILE", help="YAML config, e.g. configs/baseline.yaml"
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
    p.add_argument(
        "--data-dir", metavar="DIR", help="directory with the four Fashion-MNIST .gz files"
    )
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="evaluate a run's saved model on the test set")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument(
        "--checkpoint",
        default="model.keras",
        help="model file in RUN_DIR (default model.keras; or best.keras)",
    )
    p.add_argument(
        "--data-dir", metavar="DIR", help="directory with the four Fashion-MNIST .gz files"
    )
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("data", help="find (or download) the data and say where it is")
    p.add_argument("--check", action="store_true", help="also verify every file's SHA-256")
    p.add_argument("--data-dir", metavar="DIR", help="use this directory instead of searching")
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading")
    p.set_defaults(func=_data)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ chatter out
    # A `kill` stops training like Ctrl-C: cleanly, with the backup kept for resuming.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    from fashion_keras.train import TrainingInterrupted

    try:
        args.func(args)
    except TrainingInterrupted as e:
        print(f"fashion-keras: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("fashion-keras: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as e:
        if os.environ.get("FASHION_KERAS_DEBUG"):
            raise
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"fashion-keras: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
