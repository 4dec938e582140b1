import keras
import numpy as np
import pytest

from fashion_keras import build_cnn, build_model, list_models
from fashion_keras.losses import SmoothedSparseCrossentropy
from fashion_keras.models import whiten_first_conv

from conftest import tensorflow_only


def _np(tensor):
    """A backend's tensor as NumPy (a PyTorch tensor that tracks gradients included)."""
    return keras.ops.convert_to_numpy(tensor)


def test_registry_lists_both_variants():
    assert {"baseline", "dropout"} <= set(list_models())


def test_baseline_is_the_tutorial_network():
    model = build_model("baseline")
    assert model.count_params() == 356_234
    assert model.output_shape == (None, 10)
    assert model.get_layer("block3_pool").output.shape[1:] == (4, 4, 128)
    convs = [layer for layer in model.layers if layer.name.endswith("_conv")]
    assert [c.filters for c in convs] == [32, 64, 128]
    assert all(c.kernel_size == (3, 3) and c.padding == "same" for c in convs)
    assert all(type(c.kernel_initializer).__name__ == "GlorotUniform" for c in convs)
    assert not [layer for layer in model.layers if "dropout" in layer.name]


def test_dropout_variant_same_parameters_with_four_dropouts():
    model = build_model("dropout")
    assert model.count_params() == 356_234
    rates = [layer.rate for layer in model.layers if "dropout" in layer.name]
    assert rates == [0.25, 0.25, 0.4, 0.3]
    custom = build_model("dropout", dropout_rates=(0.1, 0.2, 0.3, 0.5))
    assert [layer.rate for layer in custom.layers if "dropout" in layer.name] == [
        0.1,
        0.2,
        0.3,
        0.5,
    ]


def test_output_is_logits_for_a_batch():
    model = build_model("baseline")
    out = model.predict(np.zeros((4, 28, 28, 1), "float32"), verbose=0)
    assert out.shape == (4, 10)
    assert not np.allclose(out.sum(axis=1), 1.0)  # logits, not probabilities


def test_generic_builder_makes_other_shapes():
    model = build_cnn(filters=(8, 16), units=(32, 16), batch_norm=True, num_classes=3)
    assert model.output_shape == (None, 3)
    assert model.get_layer("block2_bn") is not None


def test_strided_downsampling_replaces_pooling_with_the_same_shapes():
    pooled = build_cnn(filters=(8, 16), convs_per_block=(1, 2))
    strided = build_cnn(filters=(8, 16), convs_per_block=(1, 2), downsample="strides")
    assert strided.count_params() == pooled.count_params()
    assert not [layer for layer in strided.layers if layer.name.endswith("_pool")]
    strides = {c.name: c.strides for c in strided.layers if c.name.endswith("_conv")}
    assert strides == {
        "block1_conv": (2, 2),
        "block2_1_conv": (1, 1),
        "block2_2_conv": (2, 2),
    }
    assert strided.get_layer("flatten").output.shape[1:] == (7 * 7 * 16,)


def test_residual_block_passes_its_input_around_its_convolutions():
    # Block 2 keeps block 1's shape (4 filters, pooled after), so its shortcut is the input
    # itself: with its convolutions silenced, the block outputs its input.
    model = build_cnn(filters=(4, 4), convs_per_block=(1, 2), residual=True)
    for name in ("block2_1_conv", "block2_2_conv"):
        layer = model.get_layer(name)
        layer.set_weights([np.zeros_like(w) for w in layer.get_weights()])
    block = keras.Model(
        model.inputs,
        [model.get_layer("block1_pool").output, model.get_layer("block2_2_relu").output],
    )
    images = np.random.default_rng(0).random((2, 28, 28, 1), "float32")
    block_input, block_output = block.predict(images, verbose=0)
    assert block_input.max() > 0
    np.testing.assert_allclose(block_output, block_input)
    names = [layer.name for layer in model.layers]
    assert "block1_shortcut" in names and "block2_shortcut" not in names  # 1 -> 4 channels


def test_residual_shortcut_takes_the_blocks_stride_and_filters():
    model = build_cnn(
        filters=(4, 8, 8), convs_per_block=2, downsample="strides", batch_norm=True, residual=True
    )
    plain = build_cnn(filters=(4, 8, 8), convs_per_block=2, downsample="strides", batch_norm=True)
    convs = [layer.name for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convs[0] == "block1_1_conv"  # the one `whiten_first_conv` takes, not a shortcut
    shortcut = model.get_layer("block3_shortcut")
    assert shortcut.kernel_size == (1, 1) and shortcut.strides == (2, 2)
    assert shortcut.output.shape[1:] == (4, 4, 8)  # 7x7 -> 4x4, as the strided convolution
    assert model.get_layer("block3_shortcut_bn") is not None
    assert model.get_layer("flatten").output.shape == plain.get_layer("flatten").output.shape
    extra = model.count_params() - plain.count_params()
    assert extra == sum(c_in * c_out + 4 * c_out for c_in, c_out in ((1, 4), (4, 8), (8, 8)))


def test_global_pooling_head_does_not_depend_on_the_image_size():
    # Averaged over positions, the last feature map is one number a filter at any image size:
    # a network trained on 14x14 images has every weight a 28x28 one needs.
    args = {"filters": (4, 8), "downsample": "strides", "global_pooling": True}
    full = build_cnn(**args)
    small = build_cnn(input_shape=(14, 14, 1), **args)
    assert [w.shape for w in small.weights] == [w.shape for w in full.weights]
    assert full.get_layer("dense1").kernel.shape == (8, 128)
    full.set_weights(small.get_weights())
    images = np.random.default_rng(0).random((2, 28, 28, 1), "float32")
    features = keras.Model(full.inputs, full.get_layer("global_pooling").output)
    last_map = keras.Model(full.inputs, full.get_layer("block2_conv").output)
    np.testing.assert_allclose(
        features.predict(images, verbose=0),
        last_map.predict(images, verbose=0).mean(axis=(1, 2)),  # block2_conv ends in its ReLU
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"residual": "yes"}, "residual must be true or false. Received: residual='yes'"),
        ({"global_pooling": 1}, "global_pooling must be true or false. Received: global_pooling=1"),
        (
            {"variant": "resnet"},
            "Unknown model variant 'resnet'. Available: baseline, dropout, improved",
        ),
        ({"variant": "dropout", "dropout_rates": (0.5, 0.5, 1.0, 0.2)}, "[0, 1)"),
        ({"variant": "dropout", "dropout_rates": (-0.1, 0.5, 0.5, 0.2)}, "[0, 1)"),
        ({"variant": "dropout", "dropout_rates": (0.5,)}, "dropout_rates must be None or 4 rates"),
        ({"filters": (32, 0)}, "filters must be integers of at least 1. Received: filters=(32, 0)"),
        ({"units": -1}, "units must be integers of at least 1"),
        ({"kernel_size": 2.5}, "kernel_size must be integers of at least 1"),
        ({"num_classes": 0}, "num_classes"),
        ({"dropout_rate": 0.5}, "did you mean 'dropout_rates'?"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, message):
    with pytest.raises(ValueError) as e:
        build_model(**kwargs)
    assert message in str(e.value)


def test_improved_variant_adds_convs_batch_norm_and_augmentation():
    model = build_model("improved")
    names = [layer.name for layer in model.layers]
    assert names[1:4] == ["random_translation", "random_flip", "add_mirrors"]
    assert names[-1] == "average_mirrors"
    convs = [layer.name for layer in model.layers if layer.name.endswith("_conv")]
    assert convs == [
        "block1_conv",
        "block2_1_conv",
        "block2_2_conv",
        "block3_1_conv",
        "block3_2_conv",
    ]
    assert len([n for n in names if n.endswith("_bn")]) == 5
    assert not [n for n in names if n.endswith("_pool")]  # strided convolutions instead
    assert model.count_params() == 541_994
    assert [layer.rate for layer in model.layers if "dropout" in layer.name] == [0.1, 0.2, 0.3]


def test_augmentation_acts_in_training_only():
    model = build_cnn(
        filters=(4,), units=8, random_translation=0.3, random_shift=2, random_flip="horizontal"
    )
    plain = build_cnn(filters=(4,), units=8)
    for layer in plain.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    images = np.random.default_rng(0).random((16, 28, 28, 1)).astype("float32")
    np.testing.assert_allclose(_np(model(images, training=False)), _np(plain(images)), rtol=1e-6)
    assert not np.allclose(_np(model(images, training=True)), _np(plain(images)), rtol=1e-3)


def test_test_time_flip_averages_each_image_with_its_mirror_outside_training():
    model = build_cnn(filters=(4, 8), units=8, test_time_flip=True)
    plain = build_cnn(filters=(4, 8), units=8)
    plain.set_weights(model.get_weights())
    images = np.random.default_rng(0).random((5, 28, 28, 1)).astype("float32")
    mirrored = (plain.predict(images, verbose=0) + plain.predict(images[:, :, ::-1], verbose=0)) / 2
    np.testing.assert_allclose(model.predict(images, verbose=0), mirrored, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_np(model(images, training=True)), _np(plain(images)), rtol=1e-6)
    assert not np.allclose(_np(model(images)), _np(plain(images)), rtol=1e-3)


def test_test_time_shift_averages_each_image_with_its_moves_and_their_mirrors():
    from fashion_keras.shift import moved

    model = build_cnn(filters=(4, 8), units=8, test_time_flip=True, test_time_shift=2)
    plain = build_cnn(filters=(4, 8), units=8)
    plain.set_weights(model.get_weights())
    images = np.random.default_rng(0).random((5, 28, 28, 1)).astype("float32")
    moves = [(0, 0), (2, 0), (-2, 0), (0, 2), (0, -2)]  # (down, right)
    views = [moved(images, down, right) for down, right in moves]
    views += [view[:, :, ::-1] for view in views]
    expected = np.mean([plain.predict(view, verbose=0) for view in views], axis=0)
    np.testing.assert_allclose(model.predict(images, verbose=0), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_np(model(images, training=True)), _np(plain(images)), rtol=1e-6)


def test_shift_images_moves_each_image_as_the_data_shift_does():
    from fashion_keras.layers import shift_images
    from fashion_keras.shift import moved

    images = np.random.default_rng(0).random((6, 28, 28, 2)).astype("float32")
    moves = np.array([[0, 0], [1, 0], [0, -1], [-2, 2], [3, -3], [-1, -2]], dtype="int32")
    shifted = _np(shift_images(images, moves))
    for image, out, (down, right) in zip(images, shifted, moves, strict=True):
        np.testing.assert_array_equal(out, moved(image[None], down, right)[0])


def test_random_shift_moves_training_images_to_every_position():
    from fashion_keras.layers import RandomShift
    from fashion_keras.shift import moved

    layer = RandomShift(1, seed=0)
    images = np.random.default_rng(0).random((450, 28, 28, 1)).astype("float32")
    np.testing.assert_array_equal(_np(layer(images, training=False)), images)
    shifted = _np(layer(images, training=True))
    positions = [(down, right) for down in (-1, 0, 1) for right in (-1, 0, 1)]
    found = [
        next(m for m in positions if np.array_equal(out, moved(image[None], *m)[0]))
        for image, out in zip(images, shifted, strict=True)
    ]
    counts = [found.count(m) for m in positions]
    assert min(counts) > 20, counts  # 50 expected for each of the 9 positions
    assert RandomShift.from_config(layer.get_config()).pixels == 1


def test_random_erasing_overwrites_one_rectangle_per_training_image():
    model = build_cnn(filters=(4,), units=8, random_erasing=1.0)
    erasing = model.get_layer("random_erasing")
    images = np.full((32, 28, 28, 1), 0.5, dtype="float32")
    np.testing.assert_array_equal(_np(erasing(images, training=False)), images)
    changed = _np(erasing(images, training=True)) != images
    assert changed.any(axis=(1, 2, 3)).all()  # probability 1: every image
    rows, cols = changed.any(axis=(2, 3)), changed.any(axis=(1, 3))
    # One filled rectangle: the changed pixels are exactly the box their rows and columns span.
    for i in range(len(images)):
        box = rows[i][:, None] & cols[i][None, :]
        np.testing.assert_array_equal(changed[i, ..., 0], box)
        assert 0.05 < rows[i].mean() < 0.65 and 0.05 < cols[i].mean() < 0.65


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"convs_per_block": (1, 2)},
            "convs_per_block must be one integer or one per conv block (3)",
        ),
        ({"convs_per_block": 0}, "convs_per_block must be integers of at least 1"),
        ({"random_translation": 1.5}, "random_translation must be a fraction"),
        ({"random_translation": True}, "random_translation must be a fraction"),
        ({"random_flip": "sideways"}, "random_flip must be one of (None, 'horizontal'"),
        ({"random_shift": 1.5}, "random_shift must be an integer of at least 0"),
        ({"random_shift": 14}, "random_shift must move images by less than half their size"),
        ({"test_time_shift": -1}, "test_time_shift must be an integer of at least 0"),
        ({"test_time_shift": 14}, "test_time_shift must move images by less than half their"),
        ({"random_erasing": 1.5}, "random_erasing must be a probability in [0, 1]"),
        ({"random_erasing": "0.5"}, "random_erasing must be a probability in [0, 1]"),
        ({"downsample": "avg_pool"}, "downsample must be one of ('max_pool', 'strides')"),
        ({"test_time_flip": "yes"}, "test_time_flip must be true or false. Received: "),
    ],
)
def test_bad_block_and_augmentation_arguments(kwargs, message):
    with pytest.raises(ValueError) as e:
        build_cnn(**kwargs)
    assert message in str(e.value)


@tensorflow_only  # elsewhere both layers run Keras' own ops
@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_fused_batch_norm_matches_keras_layer(policy):
    import keras
    import tensorflow as tf

    from fashion_keras.layers import FusedBatchNormalization

    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(2.0, 3.0, (16, 7, 7, 8)).astype("float32"))
    keras.mixed_precision.set_dtype_policy(policy)
    try:
        ours, theirs = (
            FusedBatchNormalization(momentum=0.9),
            keras.layers.BatchNormalization(momentum=0.9),
        )
        for layer in (ours, theirs):
            layer.build(x.shape)
            layer.gamma.assign(np.linspace(0.5, 1.5, 8))
            layer.beta.assign(np.linspace(-1, 1, 8))
        results = []
        for layer in (ours, theirs):
            with tf.GradientTape() as tape:
                y = layer(x, training=True)
                loss = tf.reduce_sum(tf.cast(y, "float32") ** 3)
            grads = tape.gradient(loss, [layer.gamma, layer.beta])
            results.append(
                [y, layer.moving_mean, layer.moving_variance, *grads, layer(x, training=False)]
            )
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    assert results[0][0].dtype == results[1][0].dtype  # the policy's compute dtype
    tol = 1e-5 if policy == "float32" else 2e-2  # bfloat16 keeps 8 bits of mantissa
    for a, b in zip(*results, strict=True):
        a, b = (np.asarray(tf.cast(t, "float32")) for t in (a, b))
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * np.abs(b).max())


def test_batch_norm_model_saves_and_loads(tmp_path):
    import keras

    from fashion_keras.layers import FusedBatchNormalization

    model = build_model("improved")
    model.save(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    assert type(reloaded.get_layer("block1_bn")) is FusedBatchNormalization
    images = np.random.default_rng(0).random((4, 28, 28, 1)).astype("float32")
    np.testing.assert_allclose(
        _np(reloaded(images, training=False)), _np(model(images, training=False)), rtol=1e-6
    )


def _description(layer):
    """What a layer computes, in the terms the tutorial states: type and arguments."""
    keys = ("filters", "kernel_size", "strides", "padding", "pool_size", "units", "rate")
    config = layer.get_config()
    described = {key: config[key] for key in keys if key in config}
    if "activation" in config:
        described["activation"] = config["activation"]
    return type(layer).__name__, described


def test_the_baseline_is_the_tutorial_network_layer_for_layer():
    from fashion_keras import tutorial_model

    tutorial, baseline = tutorial_model(), build_model("baseline")
    assert [_description(layer) for layer in baseline.layers[1:]] == [
        _description(layer) for layer in tutorial.layers
    ]
    assert [_description(layer)[0] for layer in tutorial.layers] == [
        "Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D",
        "Flatten", "Dense", "Dense",
    ]  # fmt: skip
    assert baseline.count_params() == tutorial.count_params() == 356_234
    assert tutorial.output_shape == baseline.output_shape == (None, 10)


def test_the_dropout_variant_differs_only_by_its_dropout_layers():
    baseline, dropout = build_model("baseline"), build_model("dropout")
    kept = [layer for layer in dropout.layers if not isinstance(layer, keras.layers.Dropout)]
    assert [_description(layer) for layer in kept] == [
        _description(layer) for layer in baseline.layers
    ]
    after = {
        dropout.layers[i - 1].name: layer.rate
        for i, layer in enumerate(dropout.layers)
        if isinstance(layer, keras.layers.Dropout)
    }
    assert after == {"block1_pool": 0.25, "block2_pool": 0.25, "block3_pool": 0.4, "dense1": 0.3}


def test_loading_without_our_layers_names_the_import_that_fixes_it(tmp_path):
    import subprocess
    import sys

    from fashion_keras import load_model

    model = build_model("improved")
    model.save(tmp_path / "m.keras")
    plain = "import sys, keras; keras.saving.load_model(sys.argv[1])"
    done = subprocess.run(
        [sys.executable, "-c", plain, str(tmp_path / "m.keras")], capture_output=True, text=True
    )
    assert done.returncode != 0
    assert "Could not locate class 'AddMirrors'" in done.stderr
    assert "'module': 'fashion_keras.layers'" in done.stderr
    images = np.random.default_rng(0).random((4, 28, 28, 1)).astype("float32")
    np.testing.assert_allclose(
        load_model(tmp_path / "m.keras").predict(images, verbose=0),
        model.predict(images, verbose=0),
    )


def test_label_smoothing_spreads_each_target_over_the_other_classes():
    logits = np.random.default_rng(0).normal(size=(6, 10)).astype("float32")
    labels = np.array([0, 3, 9, 1, 1, 5])
    sparse = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, logits)
    assert _np(SmoothedSparseCrossentropy(0.0)(labels, logits)) == pytest.approx(_np(sparse))
    targets = np.full((6, 10), 0.01)  # 0.1 / 10 classes
    targets[np.arange(6), labels] = 0.91  # 1 - 0.1 + 0.1 / 10
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    expected = -np.mean(np.sum(targets * log_softmax, axis=1))
    smoothed = SmoothedSparseCrossentropy(0.1)
    assert _np(smoothed(labels, logits)) == pytest.approx(expected, rel=1e-5)
    assert _np(smoothed(labels[:, None], logits)) == pytest.approx(expected, rel=1e-5)
    restored = SmoothedSparseCrossentropy.from_config(smoothed.get_config())
    assert restored.label_smoothing == 0.1


def test_whitening_decorrelates_the_first_filters_at_keras_loudness():
    # Two channels whose neighbouring pixels correlate, as a photograph's do: 3x3x2 patches
    # have 18 directions, so 36 of the 40 filters whiten and 4 keep their random start.
    rng = np.random.default_rng(0)
    images = rng.random((300, 12, 12, 2)).astype("float32")
    images = (images + np.roll(images, 1, axis=1) + np.roll(images, 1, axis=2)) / 3
    model = build_cnn(input_shape=(12, 12, 2), filters=(40, 8), units=())
    conv = model.get_layer("block1_conv")
    before = _np(conv.kernel).copy()
    whiten_first_conv(model, images)
    after = _np(conv.kernel)

    def moments(kernel):  # of the outputs, over every patch (the layer's own convolution)
        outputs = _np(keras.ops.conv(images, kernel, padding="valid")).reshape(-1, 40)
        return outputs.T.astype("float64") @ outputs / len(outputs)

    loudness = np.sqrt(np.mean(np.diag(moments(before))))
    whitened = moments(after)[:18, :18]
    energies = np.diag(whitened)
    assert energies[0] == pytest.approx(loudness**2, rel=1e-3)  # the top direction: all of it
    assert np.all(np.diff(energies) <= 1e-6) and energies[-1] > 0.3 * loudness**2
    assert np.abs(whitened - np.diag(energies)).max() < 1e-4 * loudness**2  # uncorrelated
    np.testing.assert_array_equal(after[..., 18:36], -after[..., :18])
    np.testing.assert_array_equal(after[..., 36:], before[..., 36:])
