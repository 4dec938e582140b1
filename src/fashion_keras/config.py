"""Run configuration: YAML files loaded into validated dataclasses.

Section keys are the arguments of the functions they feed: `model` goes to
`build_model`, `data` to `load_data`, `training` to `model.compile`/`model.fit`;
`larger_model` holds `model` arguments for a time budget that fits many epochs.
Every mistake is a `ConfigError` naming the key, raised before anything is trained.

A config is a YAML file or the name of a preset shipped with the package
(`list_presets()`: baseline, dropout, fast, fast_shifted, improved).
"""

import dataclasses
import difflib
import importlib.resources
import math
import numbers
import types
import typing
from pathlib import Path

import yaml

from fashion_keras import models
from fashion_keras.checks import is_integer
from fashion_keras.data import IMAGE_SHAPE, NUM_CLASSES
from fashion_keras.errors import UserError


class ConfigError(UserError):
    """A config file or override is wrong; the message names the key."""


@dataclasses.dataclass
class DataConfig:
    validation_size: int = 5000  # taken from the start of the official training file
    train_limit: int | None = None  # exactly this many training images, even over the classes
    eval_limit: int | None = None  # likewise for validation and test
    validation_start: int = 0  # where in that file the validation images begin


@dataclasses.dataclass
class TrainingConfig:
    epochs: float | None = 20  # passes over the training images (a fraction cuts the last
    # one short); null when time_budget_s chooses the number
    time_budget_s: float | None = None  # train for this many seconds to the test result
    # instead (from the call of train(); on the command line from process start): a short
    # warm-up measures the speed and fixes the epochs
    batch_size: int = 128  # per replica; the global batch is this times the replicas
    learning_rate: float = 1e-3
    lr_schedule: str = "constant"  # constant | cosine | linear | wsd (all but the first
    # anneal to 0, and a time budget plans their end again after every epoch; wsd holds the
    # rate and anneals over the last fifth, so the end moves freely until then; within an
    # anneal the rest is stretched: lr_stretches)
    warmup_epochs: int = 0  # the rate rises linearly from 0 over these first epochs; with a
    # time budget, the epochs are planned again once they have run (their measured time)
    lr_horizon_epochs: float | None = None  # the epochs lr_schedule anneals over, when not
    # `epochs` (a time budget's deadline stopped the run before its schedule ended)
    lr_stretches: list | None = None  # [[done, planned], ...]: after `done` epochs, the rest
    # of the schedule, planned to end at `planned` epochs, was stretched onto the next pair's
    # `planned` (the last pair's onto lr_horizon_epochs or epochs): a time budget re-planned
    # within the anneal (callbacks.AnnealLearningRate.stretch)
    label_smoothing: float = 0.0  # each training target spread over the other classes:
    # 1 - s + s/10 on the true class, s/10 on the others (losses.SmoothedSparseCrossentropy)
    lookahead: float = 0.0  # after each compiled call (steps_per_execution batches) the
    # weights step back toward where the call began: slow + lookahead * (trained - slow),
    # Lookahead's step size (callbacks.Lookahead); 0: off
    whitened_init: bool = False  # the first convolution starts as a whitening of the
    # training images' patches, at Keras' initial loudness (models.whiten_first_conv)
    early_stopping_patience: int | None = None  # stop after N epochs without a better
    # val_loss, and keep the best epoch's weights (from best.keras); None: run all epochs
    deterministic: bool = False  # TF op determinism: bit-identical reruns on CPU
    precision: str = "auto"  # auto | float32 | mixed_bfloat16 | mixed_float16
    steps_per_execution: int = 1  # batches per compiled call (fewer Python round trips); the
    # run lowers it to the most that divide an epoch's batches, and the learning rate changes
    # once a call
    jit_compile: bool = False  # XLA; measured slower on CPU here (see bench/)
    members: int = 1  # networks trained one after another (seeds seed, seed + 1000, ...),
    # each to an equal share of the time budget, and evaluated as one: the mean of their
    # softmax (fashion_keras.ensemble)

    def __post_init__(self):
        if isinstance(self.epochs, float) and self.epochs.is_integer():
            self.epochs = int(self.epochs)  # 20, not 20.0, in a saved config.yaml


@dataclasses.dataclass
class DistributeConfig:
    strategy: str = "auto"  # auto | single | mirrored | multi_worker
    cpu_devices: int | None = None  # mirrored over N logical CPUs (for testing)


@dataclasses.dataclass
class LargerModelConfig:
    from_epochs: float | None = None  # with training.time_budget_s: where the budget fits at
    # least this many epochs of `model` (by the plan's first measure), train the larger one
    # instead, planned from its own measure; null: never. Ignored with training.epochs
    model: dict = dataclasses.field(default_factory=dict)  # the `model` arguments that change


@dataclasses.dataclass
class Config:
    name: str | None = None  # run name; defaults to the model variant
    seed: int = 42
    model: dict = dataclasses.field(default_factory=lambda: {"variant": "baseline"})
    larger_model: LargerModelConfig = dataclasses.field(default_factory=LargerModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)
    distribute: DistributeConfig = dataclasses.field(default_factory=DistributeConfig)

    @property
    def run_name(self):
        return self.name or self.model.get("variant", "baseline")

    def model_kwargs(self):
        """The `model` section as `build_model` arguments (YAML lists become tuples)."""
        return {k: tuple(v) if isinstance(v, list) else v for k, v in self.model.items()}

    def to_dict(self):
        return dataclasses.asdict(self)


def with_larger_model(config):
    """`config` training its `larger_model` (which the result no longer offers)."""
    model = {**config.model, **config.larger_model.model}
    return dataclasses.replace(config, model=model, larger_model=LargerModelConfig())


_UNIONS = (typing.Union, types.UnionType)
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
LR_SCHEDULES = ("constant", "cosine", "linear", "wsd")
STRATEGIES = ("auto", "single", "mirrored", "multi_worker")  # see fashion_keras.distribute
LEAST_BUDGET_S = 10  # a budgeted run's least: its warm-up measure and an epoch need some
# An ensemble's own end after its last member: averaging, building and saving `model.keras`
# and writing `metrics.json`. It took 0.2 s for two `fast_shifted` networks on a 2-core
# AMD EPYC (docs/results.md, 2026-12-06, twenty-seventh session); larger networks and slower
# disks take longer.
END_RESERVE_S = 2.0


def _type_name(hint):
    if typing.get_origin(hint) in _UNIONS:
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    return {type(None): "null"}.get(hint, getattr(hint, "__name__", str(hint)))


def _number(text):
    """`text` as a finite float if it spells one, else `text` unchanged."""
    try:
        number = float(text)
    except ValueError:
        return text
    return number if math.isfinite(number) else text


def _coerce(key, value, hint):
    """Checks `value` against the type `hint`; returns it as Python's int or float (numpy's
    numbers are accepted, and ints as floats)."""
    if typing.get_origin(hint) in _UNIONS:
        for arg in typing.get_args(hint):
            if arg is type(None) and value is None:
                return None
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if hint is float and isinstance(value, str):
        value = _number(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
    ok = (
        (hint is bool and isinstance(value, bool))
        or (hint is int and is_integer(value))
        or (hint is float and isinstance(value, numbers.Real) and not isinstance(value, bool))
        or (hint in (str, dict, list) and isinstance(value, hint))
    )
    if not ok:
        raise ConfigError(
            f"{key}: expected {_type_name(hint)}, got {type(value).__name__} {value!r}"
        )
    if hint is float:
        value = float(value)  # numpy's numbers too: config.yaml is written by yaml.safe_dump
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
    return int(value) if hint is int else value


def _unknown_key(key, known):
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], known, n=1)
    hint = (
        f" (did you mean {key.rsplit('.', 1)[0] + '.' if '.' in key else ''}{close[0]}?)"
        if close
        else ""
    )
    return ConfigError(f"unknown config key {key!r}{hint}; known keys: {', '.join(known)}")


def _build(cls, values, prefix=""):
    if not isinstance(values, dict):
        raise ConfigError(
            f"{prefix.rstrip('.') or 'config'}: expected a mapping of keys, got {values!r}"
        )
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise _unknown_key(prefix + str(key), fields)
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(prefix + key, value, hint)
    return cls(**kwargs)


def _check_ranges(config):
    t, d = config.training, config.data
    if (t.epochs is None) == (t.time_budget_s is None):
        raise ConfigError(
            "set one of training.epochs and training.time_budget_s, and the other to null. "
            f"Received: training.epochs={t.epochs!r}, training.time_budget_s={t.time_budget_s!r}"
        )
    if t.time_budget_s is not None and config.distribute.strategy == "multi_worker":
        raise ConfigError(
            "training.time_budget_s cannot be used with distribute.strategy=multi_worker "
            "(each worker would measure its own speed); set training.epochs instead"
        )
    if t.members > 1 and config.distribute.strategy == "multi_worker":
        raise ConfigError(
            "training.members cannot be more than 1 with distribute.strategy=multi_worker; "
            "train the members as separate runs and average them with `fashion-keras predict`"
        )
    least = LEAST_BUDGET_S * t.members + END_RESERVE_S
    if t.members > 1 and t.time_budget_s is not None and t.time_budget_s <= least:
        raise ConfigError(
            f"training.time_budget_s={t.time_budget_s:g} cannot hold {t.members} "
            f"training.members (each needs {LEAST_BUDGET_S} s, and the ensemble's end "
            f"{END_RESERVE_S:g}): give more than {least:g} (start-up counts too), or fewer members"
        )
    checks = [
        (
            "seed",
            config.seed,
            0 <= config.seed < 2**32,
            "a whole number from 0 to 4294967295 (2**32 - 1)",
        ),
        ("training.epochs", t.epochs, t.epochs is None or t.epochs >= 1, "at least 1"),
        (
            "training.time_budget_s",
            t.time_budget_s,
            t.time_budget_s is None or t.time_budget_s >= LEAST_BUDGET_S,
            f"at least {LEAST_BUDGET_S} (seconds to the test result, from the call of "
            "train() or, on the command line, from process start)",
        ),
        (
            "training.warmup_epochs",
            t.warmup_epochs,
            0 <= t.warmup_epochs < (t.epochs or math.inf),
            "at least 0 and less than training.epochs (set it to 0 for so short a run)",
        ),
        (
            "training.lr_horizon_epochs",
            t.lr_horizon_epochs,
            t.lr_horizon_epochs is None or t.lr_horizon_epochs >= (t.epochs or 1),
            "null, or at least training.epochs",
        ),
        (
            "training.lr_stretches",
            t.lr_stretches,
            _stretches_ok(t.lr_stretches, t.lr_horizon_epochs or t.epochs or math.inf),
            "null, or a list of [done, planned] epoch pairs, done increasing, each less than "
            "its planned and than the next pair's planned (the last pair's: "
            "training.lr_horizon_epochs, or else training.epochs)",
        ),
        (
            "larger_model.from_epochs",
            config.larger_model.from_epochs,
            config.larger_model.from_epochs is None or config.larger_model.from_epochs >= 1,
            "at least 1, or null for never",
        ),
        (
            "training.members",
            t.members,
            t.members >= 1 and config.seed + 1000 * (t.members - 1) < 2**32,
            "at least 1, with seed + 1000 * (training.members - 1) below 2**32 (the last "
            "member's seed)",
        ),
        ("training.batch_size", t.batch_size, t.batch_size >= 1, "at least 1"),
        ("training.learning_rate", t.learning_rate, t.learning_rate > 0, "greater than 0"),
        (
            "training.label_smoothing",
            t.label_smoothing,
            0 <= t.label_smoothing < 1,
            "at least 0 and less than 1 (0: no smoothing; 0.1 is usual)",
        ),
        (
            "training.steps_per_execution",
            t.steps_per_execution,
            t.steps_per_execution >= 1,
            "at least 1",
        ),
        (
            "training.lookahead",
            t.lookahead,
            0 <= t.lookahead <= 1 and (not t.lookahead or t.steps_per_execution >= 2),
            "0 (off) or a step size of at most 1 (0.5 is usual), with "
            "training.steps_per_execution at least 2 (it steps back after each call)",
        ),
        (
            "training.early_stopping_patience",
            t.early_stopping_patience,
            t.early_stopping_patience is None or t.early_stopping_patience >= 1,
            "at least 1, or null to run all epochs",
        ),
        ("data.validation_size", d.validation_size, 1 <= d.validation_size < 60000, "in 1..59999"),
        (
            "data.validation_start",
            d.validation_start,
            0 <= d.validation_start <= 60000 - d.validation_size,
            f"between 0 and {60000 - d.validation_size} (60,000 training images less validation's)",
        ),
    ]
    for key, value, allowed in (
        ("training.precision", t.precision, PRECISIONS),
        ("training.lr_schedule", t.lr_schedule, LR_SCHEDULES),
        ("distribute.strategy", config.distribute.strategy, STRATEGIES),
    ):
        checks.append((key, value, value in allowed, f"one of {', '.join(allowed)}"))
    if d.train_limit is not None:
        most = 60000 - d.validation_size
        checks.append(
            (
                "data.train_limit",
                d.train_limit,
                10 <= d.train_limit <= most,
                f"between 10 and {most} (the training images left after validation)",
            )
        )
    if d.eval_limit is not None:
        most = min(d.validation_size, 10000)
        checks.append(
            ("data.eval_limit", d.eval_limit, 10 <= d.eval_limit <= most, f"between 10 and {most}")
        )
    if config.distribute.cpu_devices is not None:
        n = config.distribute.cpu_devices
        checks.append(("distribute.cpu_devices", n, n >= 1, "at least 1"))
    for key, value, ok, allowed in checks:
        if not ok:
            raise ConfigError(f"{key} must be {allowed}. Received: {key}={value!r}")
    _check_model("model", config)
    if config.larger_model.model:
        _check_model("larger_model.model", with_larger_model(config))


def _check_model(key, config):
    """Checks the network `config` trains (`key` names it in errors): valid `build_cnn`
    arguments, for Fashion-MNIST's images and classes."""
    if not all(isinstance(name, str) for name in config.model):
        raise ConfigError(
            f"{key}: each key must name a build_cnn argument. Received keys: {list(config.model)!r}"
        )
    try:
        args = models.model_args(**config.model_kwargs())
    except ValueError as e:
        raise ConfigError(f"{key}: {e}") from None
    if list(args["input_shape"]) != list(IMAGE_SHAPE) or args["num_classes"] != NUM_CLASSES:
        raise ConfigError(
            f"{key}: input_shape must be {list(IMAGE_SHAPE)} and num_classes {NUM_CLASSES} "
            "(Fashion-MNIST's images and classes). Received: "
            f"input_shape={list(args['input_shape'])}, num_classes={args['num_classes']!r}"
        )


def _stretches_ok(stretches, end):
    """Whether `stretches` (see `TrainingConfig.lr_stretches`) can be repeated: each moved
    an end still ahead of it onto another still ahead."""
    if stretches is None:
        return True
    pairs = [p for p in stretches if isinstance(p, list) and len(p) == 2]
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for p in pairs for v in p)
    if not stretches or len(pairs) != len(stretches) or not numbers:
        return False
    ends = [planned for _, planned in pairs[1:]] + [end]
    done = [d for d, _ in pairs]
    return done == sorted(set(done)) and all(
        0 < d < planned and d < after for (d, planned), after in zip(pairs, ends, strict=True)
    )


def from_dict(values):
    """Builds and validates a `Config` from a plain dict (as read from YAML)."""
    values = dict(values or {})
    if isinstance(values.get("data"), dict):
        # Files written by 0.1 name the data's directory; where the data live is now given
        # when training (--data-dir), not part of what makes a run.
        values["data"] = {k: v for k, v in values["data"].items() if k != "data_dir"}
    training = values.get("training")
    if isinstance(training, dict) and training.get("time_budget_s") is not None:
        values["training"] = {"epochs": None, **training}  # a budget alone: no default epochs
    config = _build(Config, values)
    config.model.setdefault("variant", "baseline")
    _check_ranges(config)
    return config


def parse_override(text):
    """`"training.epochs=3"` to `("training.epochs", 3)`; the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not KEY=VALUE, e.g. training.epochs=3")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


# Alternatives: an override that sets one of these clears the other.
_ALTERNATIVES = {"training.epochs": "time_budget_s", "training.time_budget_s": "epochs"}


def apply_overrides(values, overrides):
    """Returns a copy of the nested dict `values` with dotted `KEY=VALUE` overrides set.

    Setting `training.epochs` clears `training.time_budget_s` and the other way round, so
    `--set training.time_budget_s=300` turns any preset into "the best in 5 minutes".
    """
    values = yaml.safe_load(yaml.safe_dump(values or {}))
    for text in overrides:
        key, value = parse_override(text)
        if key in _ALTERNATIVES and value is not None:
            node = values.get("training")
            if isinstance(node, dict):
                node[_ALTERNATIVES[key]] = None
        node = values
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {part} is not a section")
            node = child
        node[leaf] = value
    return values


PRESETS = importlib.resources.files("fashion_keras") / "presets"


def list_presets():
    """`{name: one-line description}` of the presets shipped with the package."""
    presets = {}
    for item in sorted(PRESETS.iterdir(), key=lambda i: i.name):
        if item.name.endswith(".yaml"):
            first = item.read_text().splitlines()[0]
            presets[item.name[: -len(".yaml")]] = first.lstrip("# ").strip()
    return presets


def _read_config_text(path):
    """The text of a config file, or of the preset named `path`."""
    name = str(path)
    if name in list_presets():
        return (PRESETS / f"{name}.yaml").read_text()
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} not found; give a YAML file or one of the presets: "
            f"{', '.join(list_presets())}"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path}: cannot read ({e})") from None


def load_config(path=None, overrides=()):
    """Reads a YAML config or a preset, applies `--set` overrides and validates the result.

    Args:
        path: a YAML file, a preset's name (see `list_presets()`), or None for the
            defaults (the tutorial baseline).
        overrides: strings like `"training.epochs=3"`.

    Returns:
        A validated `Config`.

    Raises:
        ConfigError: missing or unreadable file, YAML syntax error, unknown key (with a
            "did you mean"), wrong type or out-of-range value.

    Example:
        >>> load_config("improved", ["training.time_budget_s=300"]).training.epochs is None
        True
    """
    values = {}
    if path is not None:
        text = _read_config_text(path)
        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as e:
            where = getattr(e, "problem_mark", None)
            at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
            raise ConfigError(
                f"config file {path}: YAML syntax error{at}: {getattr(e, 'problem', e)}"
            ) from None
        values = {} if values is None else values  # an empty file: the defaults
        if not isinstance(values, dict):
            raise ConfigError(
                f"config file {path}: expected sections such as training: and model:, "
                f"found a YAML {type(values).__name__}"
            )
    return from_dict(apply_overrides(values, overrides))


def resolved_text(path):
    """A saved `config.yaml` as `dump_config` writes it today (None if it no longer loads).

    Files written before the model section was spelled out resolve with today's variants.
    """
    try:
        return dump_config(load_config(path))
    except ConfigError:
        return None


def dump_config(config):
    """The config as YAML text (what a run directory's `config.yaml` holds).

    The `model` section spells out every `build_cnn` argument, not only the variant's name,
    so the file rebuilds the same network even after the variant's defaults change.
    """
    values = config.to_dict()
    args = models.model_args(**config.model_kwargs())
    values["model"] = {
        "variant": config.model["variant"],
        **{k: list(v) if isinstance(v, tuple) else v for k, v in args.items()},
    }
    return yaml.safe_dump(values, sort_keys=False, default_flow_style=None)
