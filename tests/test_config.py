import dataclasses

import numpy as np
import pytest

from fashion_keras.config import ConfigError, dump_config, from_dict, list_presets, load_config

from conftest import CONFIGS, ROOT


def test_shipped_presets_hold_the_tutorial_recipe():
    assert list(list_presets()) == ["baseline", "dropout", "fast", "fast_shifted", "improved"]
    for name in ("baseline", "dropout"):
        config = load_config(name)
        assert config.model["variant"] == name
        assert config.training.learning_rate == 1e-3 and config.training.batch_size == 128
        assert config.data.validation_size == 5000 and config.data.train_limit is None
        assert config.training.epochs == 20 and config.training.time_budget_s is None
    assert load_config("fast").training.time_budget_s == 45
    assert load_config("improved").training.time_budget_s == 1800
    # `fast` for 5 minutes, with a larger network, its training and test images moved and
    # without its label smoothing: nothing else differs.
    shifted = load_config("fast_shifted", ["training.time_budget_s=45"])
    moves = {"random_shift": 1, "test_time_shift": 1}
    larger = {"convs_per_block": [1, 2], "batch_norm": True}
    assert shifted.model == {**load_config("fast").model, **moves, **larger}
    # `fast` takes that larger network where its budget fits 14 epochs or more.
    assert load_config("fast").larger_model.model == larger
    assert load_config("fast").larger_model.from_epochs == 14
    fast = load_config("fast").training
    assert fast.label_smoothing == 0.1
    assert shifted.training == dataclasses.replace(fast, label_smoothing=0.0)
    for name in ("fast", "fast_shifted", "improved"):
        assert load_config(name).run_name == name
        assert load_config(name).training.epochs is None
    # A path still works, and the repository's configs/ is the packaged presets themselves.
    assert load_config(CONFIGS / "dropout.yaml") == load_config("dropout")
    assert (ROOT / "configs").resolve() == CONFIGS.resolve()


def test_epochs_and_time_budget_are_alternatives():
    budgeted = load_config("baseline", ["training.time_budget_s=300"])
    assert budgeted.training.time_budget_s == 300 and budgeted.training.epochs is None
    fixed = load_config("improved", ["training.epochs=3"])
    assert fixed.training.epochs == 3 and fixed.training.time_budget_s is None
    assert from_dict({"training": {"time_budget_s": 60}}).training.epochs is None
    with pytest.raises(ConfigError, match="set one of training.epochs and training.time_budget_s"):
        from_dict({"training": {"epochs": 3, "time_budget_s": 60}})
    with pytest.raises(ConfigError, match="set one of training.epochs and training.time_budget_s"):
        load_config("baseline", ["training.epochs=null"])


def test_epochs_may_end_with_a_fraction_and_whole_ones_stay_whole():
    assert load_config("baseline", ["training.epochs=3.25"]).training.epochs == 3.25
    whole = load_config("baseline", ["training.epochs=4.0"])
    assert type(whole.training.epochs) is int and "{epochs: 4," in dump_config(whole)


def test_overrides_are_typed_and_nested():
    config = load_config(
        CONFIGS / "baseline.yaml",
        [
            "training.epochs=3",
            "data.train_limit=1000",
            "seed=7",
            "model.dropout_rates=[0.1,0.1,0.1,0.1]",
        ],
    )
    assert config.training.epochs == 3 and config.data.train_limit == 1000 and config.seed == 7
    assert config.model_kwargs()["dropout_rates"] == (0.1, 0.1, 0.1, 0.1)
    assert load_config(None, ["training.learning_rate=1"]).training.learning_rate == 1.0


@pytest.mark.parametrize(
    "values, message",
    [
        ({"trainig": {}}, "unknown config key 'trainig' (did you mean training?)"),
        (
            {"training": {"epoch": 3}},
            "unknown config key 'training.epoch' (did you mean training.epochs?)",
        ),
        ({"training": {"epochs": "ten"}}, "training.epochs: expected float, got str 'ten'"),
        ({"seed": -1}, "seed must be a whole number from 0 to 4294967295 (2**32 - 1). Received: "),
        ({"seed": 2**32}, "seed must be a whole number from 0 to 4294967295"),
        ({"training": {"warmup_epochs": 1.5}}, "training.warmup_epochs: expected int"),
        (
            {"training": {"epochs": 3, "warmup_epochs": 3}},
            "training.warmup_epochs must be at least 0 and less than training.epochs",
        ),
        ({"training": {"deterministic": "yes"}}, "training.deterministic: expected bool"),
        (
            {"training": {"epochs": 0}},
            "training.epochs must be at least 1. Received: training.epochs=0",
        ),
        ({"training": {"epochs": 0.5}}, "training.epochs must be at least 1"),
        ({"training": {"batch_size": 0}}, "training.batch_size must be at least 1"),
        ({"training": {"learning_rate": 0}}, "training.learning_rate must be greater than 0"),
        ({"training": {"learning_rate": -1e-3}}, "training.learning_rate must be greater than 0"),
        (
            {"training": {"label_smoothing": 1}},
            "training.label_smoothing must be at least 0 and less than 1",
        ),
        ({"training": {"label_smoothing": -0.1}}, "training.label_smoothing must be at least 0"),
        ({"training": {"lr_stretches": 6}}, "training.lr_stretches: expected list, got int 6"),
        (
            {"training": {"epochs": 7.5, "lr_stretches": [[6, 5]]}},
            "training.lr_stretches must be null, or a list of [done, planned] epoch pairs",
        ),
        (
            {"training": {"epochs": 7.5, "lr_stretches": [[6, 7], [5, 7.2]]}},
            "training.lr_stretches must be null, or a list",
        ),
        ({"training": {"epochs": 5, "lr_stretches": [[6, 7]]}}, "training.lr_stretches must be"),
        ({"training": {"epochs": 7.5, "lr_stretches": [[6]]}}, "training.lr_stretches must be"),
        ({"data": {"train_limit": 60000}}, "data.train_limit must be between 10 and 55000"),
        ({"data": {"eval_limit": 5}}, "data.eval_limit must be between 10 and 5000"),
        (
            {"model": {"variant": "dropout", "dropout_rates": [0.5, 0.5, 1.5, 0.1]}},
            "model: Each dropout rate",
        ),
        ({"model": {"variant": "vgg"}}, "model: Unknown model variant 'vgg'"),
        ({"model": {"variant": {"a": 1}}}, "model: Unknown model variant {'a': 1}"),
        (
            {"model": {1: 2}},
            "model: each key must name a build_cnn argument. Received keys: [1, 'variant']",
        ),
        ({"model": {"kernel_size": [3, 3, 3]}}, "model: kernel_size must be one integer, the side"),
        ({"model": {"kernel_size": [3, 5]}}, "model: kernel_size must be one integer, the side"),
        ({"model": {"kernel_size": [3]}}, "model: kernel_size must be one integer, the side"),
        ({"model": {"name": "a/b"}}, "model: name must be a non-empty string without '/'"),
        (
            {"model": {"input_shape": [32, 32, 1]}},
            "model: input_shape must be [28, 28, 1] and num_classes 10 (Fashion-MNIST's",
        ),
        ({"model": {"num_classes": 5}}, "Received: input_shape=[28, 28, 1], num_classes=5"),
        (
            {"larger_model": {"from_epochs": 3, "model": {"num_classes": 5}}},
            "larger_model.model: input_shape must be",
        ),
        ({"training": {"epochs": float("inf")}}, "training.epochs: expected a finite number"),
        (
            {"training": {"epochs": None, "time_budget_s": float("inf")}},
            "training.time_budget_s: expected a finite number, got inf",
        ),
        (
            {"distribute": {"strategy": "tpu"}},
            "distribute.strategy must be one of auto, single, mirrored, multi_worker",
        ),
        ({"training": 3}, "training: expected a mapping"),
        ({"training": {"precision": "fp8"}}, "training.precision must be one of auto, float32"),
        (
            {"training": {"lr_schedule": "step"}},
            "training.lr_schedule must be one of constant, cosine, linear",
        ),
        (
            {"training": {"early_stopping_patience": 0}},
            "training.early_stopping_patience must be at least 1, or null to run all epochs",
        ),
        (
            {"training": {"steps_per_execution": 0}},
            "training.steps_per_execution must be at least 1",
        ),
        (
            {"training": {"lookahead": 1.5, "steps_per_execution": 10}},
            "training.lookahead must be 0 (off) or a step size of at most 1",
        ),
        (
            {"training": {"lookahead": 0.5}},  # steps_per_execution 1: a step back every batch
            "with training.steps_per_execution at least 2 (it steps back after each call). "
            "Received: training.lookahead=0.5",
        ),
        (
            {"training": {"epochs": None, "time_budget_s": 5}},
            "training.time_budget_s must be at least 10",
        ),
        (
            {
                "training": {"epochs": None, "time_budget_s": 60},
                "distribute": {"strategy": "multi_worker"},
            },
            "training.time_budget_s cannot be used with distribute.strategy=multi_worker",
        ),
        ({"data": {"data_dir": "/x", "eval_limit": 5}}, "data.eval_limit must be between"),
        (
            {"data": {"validation_size": 10000, "validation_start": 50001}},
            "data.validation_start must be between 0 and 50000",
        ),
    ],
)
def test_bad_values_name_the_key(values, message):
    with pytest.raises(ConfigError) as e:
        from_dict(values)
    assert message in str(e.value)


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found; give a YAML file or one of the presets: "):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="baseline, dropout, fast, fast_shifted, improved"):
        load_config("basline")
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  epochs: [1\n")
    with pytest.raises(ConfigError, match=r"YAML syntax error at line \d+, column \d+"):
        load_config(bad)
    # YAML 1.1 reads 1e-3 as a string; a float key takes it as the number it spells.
    assert load_config(None, ["training.learning_rate=1e-3"]).training.learning_rate == 0.001
    bad.write_text("- training\n- model\n")
    with pytest.raises(ConfigError, match="expected sections such as training:.*found a YAML list"):
        load_config(bad)
    for text, found in (("[]\n", "list"), ("0\n", "int"), ("false\n", "bool")):
        bad.write_text(text)  # empty, but not the defaults: a mistake
        with pytest.raises(ConfigError, match=f"found a YAML {found}"):
            load_config(bad)
    bad.write_text("# nothing yet\n")
    assert load_config(bad) == load_config(None)  # an empty file: the defaults
    with pytest.raises(ConfigError, match="training.epochs: expected a finite number, got inf"):
        load_config(None, ["training.epochs=.inf"])  # YAML's infinity
    with pytest.raises(ConfigError, match="not KEY=VALUE"):
        load_config(None, ["training.epochs"])


def test_numpy_numbers_become_python_numbers():
    # As a script sweeping np.logspace sets them; config.yaml is written by yaml.safe_dump.
    values = {"seed": np.int64(3), "training": {"learning_rate": np.float32(0.5)}}
    config = from_dict({**values, "data": {"train_limit": np.int32(1000)}})
    assert type(config.seed) is int and type(config.data.train_limit) is int
    assert type(config.training.learning_rate) is float and config.training.learning_rate == 0.5
    assert "learning_rate: 0.5" in dump_config(config)
    with pytest.raises(ConfigError, match="expected a finite number, got nan"):
        from_dict({"training": {"learning_rate": np.float32("nan")}})
    with pytest.raises(ConfigError, match="seed: expected int, got float64"):
        from_dict({"seed": np.float64(3)})
