"""`train()` in process: early stopping, the improved preset end to end, on real data; run dirs."""

import re
import signal

import keras
import numpy as np
import pytest
import yaml

from fashion_keras import build_cnn
from fashion_keras import callbacks as cb
from fashion_keras import train as train_module
from fashion_keras.config import ConfigError, TrainingConfig, load_config
from fashion_keras.data import load_data, make_dataset
from fashion_keras.models import load_model
from fashion_keras.rundir import RunError, evaluate_run
from fashion_keras.train import compile_model, open_run_dir, train, trained_epochs, whole_calls
from fashion_keras.uncertainty import fit_temperature

from conftest import SMOKE


def test_make_dataset_resumes_the_same_batches_without_autotuning():
    x = np.arange(10, dtype="float32").reshape(10, 1)
    y = np.arange(10)
    full = make_dataset(x, y, 4, seed=1, first_epoch=0, epochs=3)
    batches = [images.tolist() for images, _ in full.as_numpy_iterator()]
    resumed = make_dataset(x, y, 4, seed=1, first_epoch=1, epochs=3)
    # Three batches (4, 4, 2) per epoch, each epoch a different order; images keep their labels.
    assert len(batches) == 9 and batches[:3] != batches[3:6]
    assert [images.tolist() for images, _ in resumed.as_numpy_iterator()] == batches[3:]
    assert all(np.array_equal(images[:, 0], labels) for images, labels in full.as_numpy_iterator())
    # The autotuner's thread made deleting the iterator block for seconds at the end of fit().
    assert resumed.options().autotune.enabled is False


@pytest.mark.slow
def test_early_stopping_stops_and_keeps_the_best_epoch(tmp_path):
    # 100 images at a high learning rate overfit within a few epochs.
    overrides = [
        "data.train_limit=100",
        "data.eval_limit=100",
        "training.epochs=30",
        "training.learning_rate=0.01",
        "training.early_stopping_patience=1",
    ]
    result = train(load_config("baseline", overrides), tmp_path / "run", verbose=0)
    metrics = result.metrics
    assert metrics["stopped_early"] and metrics["epochs"] < 30
    assert len(result.history) == metrics["epochs"]
    # Patience 1: the run stops at the first epoch that does not beat the best.
    assert metrics["best_epoch"] == metrics["epochs"] - 1
    # The final model is the best epoch's, not the last one's, and says so.
    assert metrics["evaluated_epoch"] == metrics["best_epoch"]
    best = evaluate_run(result.run_dir, checkpoint="best.keras")
    assert best["test_loss"] == pytest.approx(metrics["test_loss"], rel=1e-5)
    # The stored temperature is the evaluated model's, fitted on the validation split.
    _, (x_val, y_val), _ = load_data(train_limit=100, eval_limit=100)
    logits = load_model(result.run_dir / "model.keras").predict(x_val, verbose=0)
    assert metrics["temperature"] == pytest.approx(fit_temperature(logits, y_val), rel=1e-4)


@pytest.mark.slow
def test_a_diverged_run_stops_and_says_what_to_change(tmp_path, monkeypatch):
    # A loss that is NaN from the first batch stands in for a learning rate far too high.
    def diverging(config, policy=None):
        model = compile_model(config, policy)
        nan_loss = lambda labels, logits: keras.ops.log(keras.ops.mean(logits) * 0 - 1)  # noqa: E731
        model.compile(optimizer=model.optimizer, loss=nan_loss, metrics=["accuracy"])
        return model

    monkeypatch.setattr(train_module, "compile_model", diverging)
    overrides = ["data.train_limit=500", "data.eval_limit=100", "training.epochs=5",
                 "training.learning_rate=1e-2"]  # fmt: skip
    config = load_config("baseline", overrides)
    message = (r"training diverged: the loss became nan in epoch 1; train into a new "
               r"directory with a lower training.learning_rate \(it was 0.01\)")  # fmt: skip
    with pytest.raises(RunError, match=message):
        train(config, tmp_path / "run", verbose=0)
    epochs = len((tmp_path / "run" / "history.csv").read_text().splitlines()) - 1
    assert epochs == 1  # TerminateOnNaN stopped it in its first epoch
    with pytest.raises(RunError, match=message):  # a rerun finds it stopped and says it again
        train(config, tmp_path / "run", verbose=0)
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.slow
def test_improved_preset_trains_saves_and_reloads(tmp_path):
    config = load_config("improved", [*SMOKE, "training.warmup_epochs=0"])  # 1 epoch: none
    result = train(config, tmp_path / "improved", verbose=0)
    assert result.metrics["epochs"] == 1 and not result.metrics["stopped_early"]
    reloaded = keras.saving.load_model(result.run_dir / "model.keras", safe_mode=True)
    images = np.random.default_rng(0).random((8, 28, 28, 1)).astype("float32")
    np.testing.assert_allclose(
        reloaded.predict(images, verbose=0),
        result.model.predict(images, verbose=0),
        rtol=1e-5,
        atol=1e-5,
    )


def test_label_smoothing_trains_and_stays_with_the_saved_model(tmp_path):
    config = load_config("baseline", [*SMOKE, "training.label_smoothing=0.2"])
    result = train(config, tmp_path / "smoothed", verbose=0)
    saved = load_model(result.run_dir / "model.keras")
    assert saved.loss.label_smoothing == 0.2
    _, (x_val, y_val), (x_test, y_test) = load_data(train_limit=1000, eval_limit=500)
    smoothed = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.2)
    logits = saved.predict(x_val, verbose=0)
    assert saved.evaluate(x_val, y_val, verbose=0)[0] == pytest.approx(
        float(smoothed(keras.ops.one_hot(y_val, 10), logits)), rel=1e-4
    )
    # The test loss the run reports is the plain cross-entropy, as without smoothing.
    plain = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    test_loss = float(plain(y_test, saved.predict(x_test, verbose=0)))
    assert result.metrics["test_loss"] == pytest.approx(test_loss, rel=1e-4)
    assert evaluate_run(result.run_dir)["test_loss"] == pytest.approx(test_loss, rel=1e-4)


def test_lookahead_steps_back_after_every_call_of_a_run(tmp_path, monkeypatch):
    # 1,000 images are 8 batches, 4 calls of 2: after each, the weights Keras trained go
    # half-way back to the slow ones, which then move there; the run saves where they end.
    calls = []
    step_back = cb.Lookahead.on_train_batch_end

    def copies(variables):
        return [keras.ops.convert_to_numpy(v).copy() for v in variables]

    def watched(self, batch, logs=None):
        trained, slow = copies(self.model.trainable_variables), copies(self.slow)
        step_back(self, batch, logs)
        calls.append((trained, slow, copies(self.model.trainable_variables)))

    monkeypatch.setattr(cb.Lookahead, "on_train_batch_end", watched)
    sets = [*SMOKE, "training.lookahead=0.5", "training.steps_per_execution=2"]
    result = train(load_config("baseline", sets), tmp_path / "run", verbose=0)
    assert len(calls) == 4
    for trained, slow, after in calls:
        for t, s, a in zip(trained, slow, after, strict=True):
            assert not np.allclose(t, s)  # the call trained
            np.testing.assert_allclose(a, s + 0.5 * (t - s), rtol=1e-6, atol=1e-7)
    for (_, _, after), (_, next_slow, _) in zip(calls[:-1], calls[1:], strict=True):
        for a, n in zip(after, next_slow, strict=True):
            np.testing.assert_array_equal(n, a)  # the next call steps back to here
    saved = load_model(result.run_dir / "model.keras").trainable_variables
    for a, v in zip(calls[-1][2], copies(saved), strict=True):
        np.testing.assert_array_equal(v, a)


@pytest.mark.parametrize(
    ("train_limit", "replicas", "why"),
    [
        (20000, 1, "the most batches a call that divide an epoch's 157"),  # a prime
        (25600, 2, "Keras fails calls of several batches over 2 replicas"),
    ],
)
def test_lookahead_is_refused_where_a_run_can_only_run_one_batch_a_call(
    train_limit, replicas, why, capsys
):
    # Without Lookahead the run goes on at 1 batch a call, and says why.
    sets = [f"data.train_limit={train_limit}", "training.steps_per_execution=10"]
    assert (
        whole_calls(load_config("baseline", sets), 128, replicas).training.steps_per_execution == 1
    )
    assert why in capsys.readouterr().out
    with pytest.raises(
        ConfigError, match=re.escape(f"1 batch a call ({why}); set training.lookahead=0")
    ):
        whole_calls(load_config("baseline", [*sets, "training.lookahead=0.5"]), 128, replicas)


def test_train_takes_a_config_and_checks_it_again(tmp_path):
    with pytest.raises(ConfigError, match=re.escape("must be a Config from load_config")):
        train("baseline")
    config = load_config("baseline")
    config.training.epochs = 0  # edited by hand, after load_config checked it
    with pytest.raises(ConfigError, match=r"training\.epochs"):
        train(config, output=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_more_batches_a_call_than_an_epoch_holds_is_one_epoch_a_call(capsys):
    # 1,000 images: 8 batches of 128. A call of 10**12 batches is an epoch's 8, at once.
    sets = ["data.train_limit=1000", f"training.steps_per_execution={10**12}"]
    config = load_config("baseline", sets)

    def too_slow(*args):
        pytest.fail("whole_calls walked every value up to steps_per_execution")

    previous = signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(10)
    try:
        assert whole_calls(config, 128).training.steps_per_execution == 8
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert "training.steps_per_execution=8, not 1000000000000" in capsys.readouterr().out


@pytest.mark.slow
def test_test_time_moves_are_in_the_final_network_only(tmp_path):
    overrides = [*SMOKE, "model.test_time_shift=1", "training.precision=float32"]
    result = train(load_config("baseline", overrides), tmp_path / "run", verbose=0)
    _, (x_val, y_val), (x_test, y_test) = load_data(train_limit=1000, eval_limit=500)
    saved = load_model(result.run_dir / "model.keras")
    assert "add_moves" in [layer.name for layer in saved.layers]
    trained = build_cnn()  # the network without the moves, with the trained weights
    trained.set_weights(saved.get_weights())
    trained.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    final_loss = saved.evaluate(x_val, y_val, verbose=0)[0]
    # Every epoch validated the network without the moves; the test, the validation
    # accuracy and the temperature are the final network's.
    val_loss = result.history["val_loss"].iloc[-1]
    assert val_loss == pytest.approx(trained.evaluate(x_val, y_val, verbose=0), rel=1e-5)
    assert abs(val_loss - final_loss) > 1e-3
    assert result.metrics["test_accuracy"] == pytest.approx(
        saved.evaluate(x_test, y_test, verbose=0)[1]
    )
    logits = saved.predict(x_val, verbose=0)
    assert result.metrics["val_accuracy"] == np.mean(logits.argmax(1) == y_val)
    assert result.metrics["temperature"] == pytest.approx(fit_temperature(logits, y_val))


def test_run_config_spells_out_the_network_and_guards_resumes(tmp_path):
    config = load_config("improved", ["training.epochs=30", "training.time_budget_s=null"])
    run_dir = tmp_path / "run"
    open_run_dir(config, run_dir)
    saved_path = run_dir / "config.yaml"
    saved = yaml.safe_load(saved_path.read_text())
    assert saved["model"]["downsample"] == "strides"
    assert saved["model"]["convs_per_block"] == [2, 2, 2]  # the preset's (variant: 1, 2, 2)
    assert saved["model"]["units"] == 512  # the preset's (variant: 128)
    assert saved["model"]["test_time_flip"] is True  # the variant's
    # The same config resumes, and so does the run's own file.
    assert open_run_dir(config, run_dir) == config
    assert open_run_dir(load_config(saved_path), run_dir) == load_config(saved_path)

    # A run started while the variant still max-pooled must not resume with strides...
    saved["model"]["downsample"] = "max_pool"
    saved_path.write_text(yaml.safe_dump(saved, sort_keys=False))
    before = saved_path.read_text()
    with pytest.raises(RunError, match=re.escape(f"--config {saved_path} --output {run_dir}")):
        open_run_dir(config, run_dir)
    assert saved_path.read_text() == before
    # ...but resumes from its own config, network and all.
    assert open_run_dir(load_config(saved_path), run_dir) == load_config(saved_path)
    assert yaml.safe_load(saved_path.read_text())["model"]["downsample"] == "max_pool"

    # A file from before the model section was spelled out resolves with today's variant.
    saved_path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    assert open_run_dir(config, run_dir) == config
    # A file from 0.1 names the data's directory, which is not part of the run any more.
    old = config.to_dict()
    old["data"]["data_dir"] = None
    saved_path.write_text(yaml.safe_dump(old, sort_keys=False))
    assert open_run_dir(config, run_dir) == config


def test_compile_model_leaves_the_global_dtype_policy_alone():
    keras.mixed_precision.set_dtype_policy("float32")
    model = compile_model(load_config("fast"), policy="mixed_bfloat16")
    assert model.get_layer("block1_conv").compute_dtype == "bfloat16"
    assert keras.mixed_precision.dtype_policy().name == "float32"
    assert build_cnn(filters=(4,), units=8).get_layer("block1_conv").compute_dtype == "float32"


def _summaries(log_dir):
    """`{(subdir, tag)}` written under a TensorBoard log dir, plus `("graph",)` for a graph."""
    import tensorflow as tf

    found = set()
    for path in log_dir.rglob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            found |= {(path.parent.name, v.tag) for v in event.summary.value}
            if event.graph_def:
                found.add(("graph",))
    return found


def test_tensorboard_writes_what_keras_writes(tmp_path):
    from fashion_keras.callbacks import TensorBoard

    rng = np.random.default_rng(0)
    x, y = rng.random((64, 28, 28, 1), "float32"), rng.integers(0, 10, 64)
    written = []
    for callback in (keras.callbacks.TensorBoard, TensorBoard):
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(10)]
        )
        model.compile(
            optimizer="adam",
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        log_dir = tmp_path / callback.__module__
        model.fit(
            x,
            y,
            batch_size=16,
            epochs=2,
            validation_split=0.25,
            verbose=0,
            callbacks=[callback(log_dir=str(log_dir))],
        )
        written.append(_summaries(log_dir))
    assert {("train", "epoch_loss"), ("validation", "epoch_accuracy")} <= written[0]
    assert written[1] == written[0]


def test_the_best_checkpoint_is_published_only_once_its_epoch_is_committed(tmp_path):
    from fashion_keras.callbacks import BestCheckpoint

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    best = tmp_path / "best.keras"
    checkpoint = BestCheckpoint(best, tmp_path / "backup")
    checkpoint.set_model(model)
    checkpoint.set_state(None)
    checkpoint.on_train_begin()
    checkpoint.on_epoch_end(0, {"val_loss": 1.0})
    # Saved as a candidate of epoch 1, not yet where a reader (or evaluate()) would look.
    assert not best.exists() and (tmp_path / "backup" / "epoch-0001.best.keras").is_file()
    assert checkpoint.get_state() == {"best": 1.0, "file": "epoch-0001.best.keras"}
    checkpoint.on_commit(0)
    assert best.read_bytes() == (tmp_path / "backup" / "epoch-0001.best.keras").read_bytes()
    checkpoint.on_epoch_end(1, {"val_loss": 2.0})  # no better: nothing new
    assert checkpoint.get_state()["file"] == "epoch-0001.best.keras"

    # A rerun after a kill between the commit and the copy publishes the committed best.
    best.unlink()
    resumed = BestCheckpoint(best, tmp_path / "backup")
    resumed.set_state({"best": 1.0, "file": "epoch-0001.best.keras"})
    assert best.is_file()
    resumed.set_model(model)
    resumed.on_train_begin()
    assert resumed.get_state() == {"best": 1.0, "file": "epoch-0001.best.keras"}


@pytest.mark.parametrize(
    "epochs, per_call, trained",
    [(6.56, 1, 6.5605), (6.56, 10, 6.5814), (3, 2, 3), (2.5, 43, 2.5), (71.001, 1, 71)],
)
def test_trained_epochs_end_with_the_call_that_holds_the_last_batch(epochs, per_call, trained):
    # 430 batches an epoch: 6.56 epochs end at batch 2,821 (6.5605), in the call of 10 ending
    # at 2,830; 71.001 epochs end at batch 30,530, the end of the 71st.
    training = TrainingConfig(epochs=epochs, steps_per_execution=per_call)
    assert trained_epochs(training, 430) == trained
