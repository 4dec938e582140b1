"""`train()` in process: early stopping, and the improved preset end to end, on real data."""

import keras
import numpy as np
import pytest

from fashion_keras.config import load_config
from fashion_keras.train import evaluate_run, train

from conftest import CONFIGS, SMOKE


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
    result = train(load_config(CONFIGS / "baseline.yaml", overrides), tmp_path / "run", verbose=0)
    metrics = result.metrics
    assert metrics["stopped_early"] and metrics["epochs"] < 30
    assert len(result.history) == metrics["epochs"]
    # Patience 1: the run stops at the first epoch that does not beat the best.
    assert metrics["best_epoch"] == metrics["epochs"] - 1
    # The final model is the best epoch's, not the last one's.
    best = evaluate_run(result.run_dir, checkpoint="best.keras")
    assert best["test_loss"] == pytest.approx(metrics["test_loss"], rel=1e-5)


@pytest.mark.slow
def test_improved_preset_trains_saves_and_reloads(tmp_path):
    result = train(load_config(CONFIGS / "improved.yaml", SMOKE), tmp_path / "improved", verbose=0)
    assert result.metrics["epochs"] == 1 and not result.metrics["stopped_early"]
    reloaded = keras.saving.load_model(result.run_dir / "model.keras", safe_mode=True)
    images = np.random.default_rng(0).random((8, 28, 28, 1)).astype("float32")
    np.testing.assert_allclose(
        reloaded.predict(images, verbose=0),
        result.model.predict(images, verbose=0),
        rtol=1e-5,
        atol=1e-5,
    )
