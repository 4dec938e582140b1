import keras
import matplotlib.figure
import numpy as np
import pandas as pd
import pytest

from fashion_keras import build_cnn
from fashion_keras.errors import UserError
from fashion_keras.metrics import expected_calibration_error, negative_log_likelihood
from fashion_keras.plots import closing_figures, plot_shift_series
from fashion_keras.shift import SHIFTS, shift_series, shift_subset, shifted_images
from fashion_keras.uncertainty import deterministic_predict


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).random((16, 28, 28, 1), dtype="float32")


def _moved(image, down, right):
    """`image` moved by whole pixels, zeros coming in (the expected translation)."""
    moved = np.roll(image, (down, right), axis=(0, 1))
    if down > 0:
        moved[:down] = 0
    elif down < 0:
        moved[down:] = 0
    if right > 0:
        moved[:, :right] = 0
    elif right < 0:
        moved[:, right:] = 0
    return moved


# --------------------------------------------------------------------------- images


@pytest.mark.parametrize("shift", list(SHIFTS))
def test_no_shift_returns_the_images_unchanged(x, shift):
    none = SHIFTS[shift][0]
    assert none == (1.0 if shift == "contrast" else 0)
    same = shifted_images(x, shift, none)
    assert same.dtype == np.float32 and same is not x
    np.testing.assert_array_equal(same, x)


@pytest.mark.parametrize("shift", list(SHIFTS))
def test_every_intensity_gives_images_in_range_and_depends_only_on_its_inputs(x, shift):
    for intensity in SHIFTS[shift][1:]:
        images = shifted_images(x, shift, intensity, seed=3)
        assert images.dtype == np.float32 and images.shape == x.shape
        assert 0 <= images.min() and images.max() <= 1
        assert np.abs(images - x).max() > 0.05, intensity  # the shift shows
        np.testing.assert_array_equal(images, shifted_images(x, shift, intensity, seed=3))


def test_rotation_turns_counter_clockwise_about_the_centre(x):
    for degrees, expected in (
        (90, np.rot90(x, k=1, axes=(1, 2))),
        (-90, np.rot90(x, k=-1, axes=(1, 2))),
        (180, x[:, ::-1, ::-1]),
    ):
        np.testing.assert_allclose(shifted_images(x, "rotation", degrees), expected, atol=1e-5)
    turned = shifted_images(np.ones((1, 28, 28, 1)), "rotation", 45)[0, :, :, 0]
    assert turned[0, 0] == turned[-1, -1] == 0  # corners come from outside the image
    assert turned[14, 14] == pytest.approx(1)


def test_translation_moves_each_image_whole_pixels_in_one_of_four_directions(x):
    moved = shifted_images(x, "translation", 4, seed=0)
    directions = []
    for image, original in zip(moved, x, strict=True):
        matches = [
            (down, right)
            for down, right in ((0, 4), (0, -4), (4, 0), (-4, 0))
            if np.array_equal(image, _moved(original, down, right))
        ]
        assert len(matches) == 1
        directions += matches
    assert len(set(directions)) > 1  # drawn per image
    # The same directions at every intensity of a seed; other directions with another seed.
    assert all(
        np.array_equal(image, _moved(original, 2 * d // 4, 2 * r // 4))
        for image, original, (d, r) in zip(
            shifted_images(x, "translation", 2, seed=0), x, directions, strict=True
        )
    )
    assert not np.array_equal(moved, shifted_images(x, "translation", 4, seed=1))
    assert shifted_images(x, "translation", 28).max() == 0  # moved out entirely


def test_noise_has_the_asked_deviation_and_grows_along_the_series():
    grey = np.full((64, 28, 28, 1), 0.5, "float32")
    small = shifted_images(grey, "noise", 0.1, seed=0) - grey
    assert small.std() == pytest.approx(0.1, rel=0.02) and abs(small.mean()) < 0.005
    larger = shifted_images(grey, "noise", 0.2, seed=0) - grey
    unclipped = np.abs(larger) < 0.49
    np.testing.assert_allclose(larger[unclipped], 2 * small[unclipped], atol=1e-6)
    other = shifted_images(grey, "noise", 0.1, seed=1) - grey
    assert np.corrcoef(small.ravel(), other.ravel())[0, 1] < 0.05


def test_contrast_keeps_each_mean_and_scales_the_deviation(x):
    mid = 0.25 + x / 2  # pixels in [0.25, 0.75]: factors up to 1 never clip
    low = shifted_images(mid, "contrast", 0.4)
    np.testing.assert_allclose(low.mean(axis=(1, 2, 3)), mid.mean(axis=(1, 2, 3)), atol=1e-6)
    np.testing.assert_allclose(low.std(axis=(1, 2, 3)), 0.4 * mid.std(axis=(1, 2, 3)), rtol=1e-4)
    flat = shifted_images(mid, "contrast", 0)
    means = mid.mean(axis=(1, 2, 3), keepdims=True)
    np.testing.assert_allclose(flat, np.broadcast_to(means, mid.shape), atol=1e-6)


@pytest.mark.parametrize(
    "shift, intensity, message",
    [
        ("blur", 1, "Unknown shift 'blur'. Known shifts: rotation, translation, noise, contrast"),
        ("translation", 2.5, "intensity must be an integer of at least 0. Received: intensity=2.5"),
        ("translation", -2, "Received: intensity=-2"),
        ("noise", -0.1, "The noise intensity must be a number >= 0. Received: intensity=-0.1"),
        ("contrast", -1, "Received: intensity=-1"),
        ("rotation", float("nan"), "finite number of degrees. Received: intensity=nan"),
        ("rotation", True, "Received: intensity=True"),
    ],
)
def test_bad_shifts_are_clear_errors(x, shift, intensity, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        shifted_images(x, shift, intensity)


def test_images_out_of_range_are_a_clear_error(x):
    with pytest.raises(ValueError, match=r"pixels in \[0, 1\]"):
        shifted_images(x * 255, "noise", 0.1)
    with pytest.raises(ValueError, match=r"Received: x.shape=\(28, 28\)"):
        shifted_images(x[0, :, :, 0], "noise", 0.1)


# --------------------------------------------------------------------------- series


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    model = build_cnn(filters=(4,), units=8)
    logits = model.get_layer("logits")  # sharper, so that a shift shows in every metric
    kernel, bias = logits.get_weights()
    logits.set_weights([kernel * 30, bias])
    return model


def test_shift_series_scores_the_shifted_images(x, model):
    y = np.arange(16) % 10
    shifts = {"rotation": (0, 90), "noise": (0.0, 0.3)}
    seen = []

    def predict(images):
        seen.append(images)
        return deterministic_predict(model, images)

    frame = shift_series(predict, x, y, shifts=shifts, seed=2, bins=5)
    assert list(frame.columns) == [
        "shift",
        "intensity",
        "accuracy",
        "negative_log_likelihood",
        "expected_calibration_error",
    ]
    points = list(zip(frame["shift"], frame["intensity"], strict=True))
    assert points == [("rotation", 0), ("rotation", 90), ("noise", 0.0), ("noise", 0.3)]
    [images] = seen  # one call, every point's images one after another
    assert len(images) == 4 * len(x)
    for (_, row), part in zip(frame.iterrows(), np.split(images, 4), strict=True):
        expected = shifted_images(x, row["shift"], row["intensity"], seed=2)
        np.testing.assert_array_equal(part, expected)
        p = deterministic_predict(model, expected).probabilities
        assert row["accuracy"] == (p.argmax(1) == y).mean()
        # One call of 64 images against four of 16: JAX's kernels may round a batch's logits
        # differently by its size (seen at the 9th digit of an NLL of 10.8 and an ECE of 0.72).
        assert row["negative_log_likelihood"] == pytest.approx(negative_log_likelihood(p, y))
        ece = expected_calibration_error(p, y, bins=5)
        assert row["expected_calibration_error"] == pytest.approx(ece)
    unshifted = frame.iloc[[0, 2]].drop(columns=["shift", "intensity"]).to_numpy()
    np.testing.assert_array_equal(unshifted[0], unshifted[1])  # both intensities are "none"
    assert frame.loc[1, "negative_log_likelihood"] != frame.loc[0, "negative_log_likelihood"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"shifts": {"blur": (1,)}}, "Unknown shift 'blur'"),
        ({"shifts": {"noise": ()}}, r"shifts\['noise'\] must hold at least one intensity"),
        ({"y": np.zeros(15, int)}, "y_true must be 16 integer class indices"),
        ({"predict_fn": "model"}, "predict_fn must be callable. Received: str"),
        ({"predict_fn": lambda images: np.eye(10)[:16]}, "must return the Predictions of all 16"),
    ],
)
def test_shift_series_input_errors(x, model, kwargs, message):
    args = {
        "predict_fn": lambda images: deterministic_predict(model, images),
        "x": x,
        "y": np.arange(16) % 10,
        "shifts": {"noise": (0.0,)},
        **kwargs,
    }
    with pytest.raises(ValueError, match=message):
        shift_series(**args)


def test_shift_subset_keeps_a_fixed_random_subset_in_order():
    x, y = np.arange(100, dtype="float32")[:, None] / 100, np.arange(100) % 10
    sub_x, sub_y = shift_subset(x, y, 20, seed=3)
    assert len(sub_x) == 20 and np.all(np.diff(sub_x[:, 0]) > 0)
    np.testing.assert_array_equal(sub_y, np.round(sub_x[:, 0] * 100).astype(int) % 10)
    assert np.array_equal(shift_subset(x, y, 20, seed=3)[0], sub_x)
    assert not np.array_equal(shift_subset(x, y, 20, seed=4)[0], sub_x)
    assert shift_subset(x, y, 1000)[0] is x  # all of them: nothing to choose
    with pytest.raises(UserError, match="as long"):
        shift_subset(x, y[:5], 20)


def test_plot_shift_series_draws_a_line_per_method_and_metric(tmp_path):
    def frame(offset):
        rows = [("rotation", 0), ("rotation", 90)] + [("contrast", c) for c in (1.0, 0.5, 0.1)]
        values = np.arange(len(rows)) / 10 + offset
        return pd.DataFrame(
            {
                "shift": [s for s, _ in rows],
                "intensity": [i for _, i in rows],
                "accuracy": values,
                "negative_log_likelihood": values + 1,
                "expected_calibration_error": values + 2,
            }
        )

    frames = {"deterministic": frame(0.0), "ensemble": frame(0.05)}
    with closing_figures():
        fig = plot_shift_series(frames, path=tmp_path / "shift.png")
        assert isinstance(fig, matplotlib.figure.Figure)
        axes = np.array(fig.axes).reshape(3, 2)
        assert [ax.get_title() for ax in axes[0]] == ["rotation", "contrast"]
        keys = ["accuracy", "expected_calibration_error", "negative_log_likelihood"]
        for row, key in enumerate(keys):
            for column, shift in enumerate(["rotation", "contrast"]):
                lines = axes[row, column].get_lines()
                assert len(lines) == 2
                for line, method in zip(lines, frames, strict=True):
                    part = frames[method][frames[method]["shift"] == shift]
                    np.testing.assert_allclose(line.get_xdata(), part["intensity"])
                    np.testing.assert_allclose(line.get_ydata(), part[key])
        legend = [t.get_text() for t in axes[0, 0].get_legend().get_texts()]
        assert legend == ["deterministic", "ensemble"]
        assert axes[0, 1].xaxis_inverted() and not axes[0, 0].xaxis_inverted()
    assert (tmp_path / "shift.png").stat().st_size > 0
