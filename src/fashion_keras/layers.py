"""The project's layers: batch normalisation on TensorFlow's fused kernel, test-time views
(mirrors and moves), and random whole-pixel moves.

Import this module before `keras.saving.load_model` on a model that uses them.

`FusedBatchNormalization`: Keras 3's layer normalises with separate ops (moments, then scale
and shift), in float32 even under a mixed precision policy, so a bfloat16 activation is cast up
and back down around it. TensorFlow's `FusedBatchNormV3` does the same arithmetic in one op and
takes bfloat16 input. On the improved network this trained 1.45x as fast in `mixed_bfloat16`
and 1.27x in float32 (Intel Xeon with AMX, synthetic data; see README). Variables, config and
results are Keras' own (to float rounding), so weights move freely between the two layers.

`AddMirrors` and `AverageMirrors`: outside training, the network also sees each image's
horizontal mirror, and outputs the mean of the two results (`build_cnn(test_time_flip=True)`).
`AddMoves` and `AverageViews` do the same with each image moved by whole pixels down, up,
right and left: five views (`build_cnn(test_time_shift=1)`).

On JAX and PyTorch every layer here runs Keras' own ops, so a model saved on one backend
loads and predicts the same on the others.

`LogMeanSoftmax`: the output of an ensemble (`fashion_keras.ensemble`), the log of its members'
mean softmax, which as logits gives that mean back.

Call a model with these layers as `model(x, training=False)`, or use `predict`: in Keras
3.15.1 and earlier, a bare `model(x)` hands the augmentation layers' default `training=True`
on to the layers after them (keras-team/keras#23166), so the mirrors would be added but not
averaged (and batch normalisation would use the batch's statistics). `fit`, `evaluate`,
`predict` and `fashion_keras.export` always say which mode they mean."""

import keras


def _fusable(layer, inputs, mask):
    """Whether TensorFlow's fused kernel computes what `layer` would."""
    return (
        keras.backend.backend() == "tensorflow"
        and len(inputs.shape) == 4
        and layer.axis % 4 == 3
        and mask is None
        and layer.scale
        and layer.center
        and not getattr(layer, "renorm", False)  # Keras 3.14 added batch renormalization
    )


@keras.saving.register_keras_serializable(package="fashion_keras")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` computed by TensorFlow's fused kernel.

    Used for 4-D channels-last input with `scale` and `center` on the TensorFlow backend;
    anything else (masks, renorm, other axes or backends) runs Keras' own computation.

    Example:
        >>> x = layers.Conv2D(32, 3, use_bias=False)(x)
        >>> x = FusedBatchNormalization()(x)
    """

    def call(self, inputs, training=None, mask=None):
        if not _fusable(self, inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf  # only on the TensorFlow backend

        fit = bool(training and self.trainable)
        empty = tf.constant([], dtype="float32")
        outputs, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
            x=inputs,
            scale=tf.convert_to_tensor(self.gamma),
            offset=tf.convert_to_tensor(self.beta),
            mean=empty if fit else tf.convert_to_tensor(self.moving_mean),
            variance=empty if fit else tf.convert_to_tensor(self.moving_variance),
            epsilon=self.epsilon,
            is_training=fit,
        )
        if fit:
            # The kernel returns the batch variance with Bessel's correction; Keras averages
            # the plain (biased) one into moving_variance.
            count = tf.cast(tf.size(inputs) // tf.shape(inputs)[-1], "float32")
            variance = variance * (count - 1) / count
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1 - self.momentum))
            self.moving_variance.assign(
                self.moving_variance * self.momentum + variance * (1 - self.momentum)
            )
        return tf.cast(outputs, self.compute_dtype)


@keras.saving.register_keras_serializable(package="fashion_keras")
class AddMirrors(keras.layers.Layer):
    """Outside training, appends each image's horizontal mirror to the batch.

    The batch of n images becomes 2n: the images, then their mirrors in the same order.
    Pair it with `AverageMirrors` after the network's output. In training it passes the
    batch through unchanged.
    """

    def call(self, images, training=None):
        if training:
            return images
        return keras.ops.concatenate([images, keras.ops.flip(images, axis=2)], axis=0)

    def compute_output_shape(self, input_shape):
        return (None, *input_shape[1:])  # n images, or 2n outside training


@keras.saving.register_keras_serializable(package="fashion_keras")
class AddMoves(keras.layers.Layer):
    """Outside training, appends each image moved by `pixels` down, up, right and left.

    The batch of n images becomes 5n: the images, then the four moves in that order, each
    in the images' order; the gap a move leaves is filled with 0 (the background). Pair it
    with `AverageViews(5)` after the network's output. In training it passes the batch
    through unchanged.
    """

    MOVES = ((1, 0), (-1, 0), (0, 1), (0, -1))  # (down, right), in units of `pixels`

    def __init__(self, pixels=1, **kwargs):
        super().__init__(**kwargs)
        self.pixels = pixels

    def call(self, images, training=None):
        if training:
            return images
        p = self.pixels
        views = [images, *(_moved(images, down * p, right * p) for down, right in self.MOVES)]
        return keras.ops.concatenate(views, axis=0)

    def compute_output_shape(self, input_shape):
        return (None, *input_shape[1:])  # n images, or 5n outside training

    def get_config(self):
        return {**super().get_config(), "pixels": self.pixels}


def _moved(images, down, right):
    """Images (n, h, w, c) moved by whole pixels (negative: up, left), the gap filled with 0."""
    height, width = images.shape[1], images.shape[2]
    padded = keras.ops.pad(
        images, [[0, 0], [max(down, 0), max(-down, 0)], [max(right, 0), max(-right, 0)], [0, 0]]
    )
    top, left = max(-down, 0), max(-right, 0)
    return padded[:, top : top + height, left : left + width]


@keras.saving.register_keras_serializable(package="fashion_keras")
class AverageViews(keras.layers.Layer):
    """Outside training, averages the outputs of each image's `views` (see `AddMoves`).

    The batch of `views` * n outputs, each view's n in the images' order, becomes n again.
    In training it passes the batch through unchanged.

    Example:
        >>> x = AddMoves(1)(inputs)  # 5 views
        >>> ...  # the network, to logits
        >>> outputs = AverageViews(5)(logits)
    """

    def __init__(self, views=2, **kwargs):
        super().__init__(**kwargs)
        self.views = views

    def call(self, outputs, training=None):
        if training:
            return outputs
        # (views * n, k) -> (views, n, k). A reshape, not slices at n, so that the batch size
        # may stay unknown on every backend and exporter.
        grouped = keras.ops.reshape(outputs, (self.views, -1, *outputs.shape[1:]))
        return keras.ops.mean(grouped, axis=0)

    def compute_output_shape(self, input_shape):
        return (None, *input_shape[1:])

    def get_config(self):
        return {**super().get_config(), "views": self.views}


@keras.saving.register_keras_serializable(package="fashion_keras")
class AverageMirrors(AverageViews):
    """Outside training, averages each output with its mirror's (see `AddMirrors`):
    `AverageViews(2)`, under the name models saved with `test_time_flip` use.

    Example:
        >>> x = AddMirrors()(inputs)
        >>> ...  # the network, to logits
        >>> outputs = AverageMirrors()(logits)
    """

    def __init__(self, **kwargs):
        kwargs.pop("views", None)  # always 2
        super().__init__(views=2, **kwargs)


@keras.saving.register_keras_serializable(package="fashion_keras")
class LogMeanSoftmax(keras.layers.Layer):
    """The log of the mean of several logits' softmax: an ensemble's logits.

    Takes a list of logit tensors of one shape; `softmax` of the output is the mean of their
    softmax probabilities. Computed as a log-sum-exp of log-probabilities, so confident
    members do not underflow.

    Example:
        >>> logits = LogMeanSoftmax()([member(inputs) for member in members])
    """

    def call(self, logits):
        log_p = keras.ops.stack([keras.ops.log_softmax(x, axis=-1) for x in logits])
        return keras.ops.logsumexp(log_p, axis=0) - keras.ops.log(float(len(logits)))

    def compute_output_shape(self, input_shape):
        return input_shape[0]


@keras.saving.register_keras_serializable(package="fashion_keras")
class RandomShift(keras.layers.Layer):
    """In training, moves each image by a random whole number of pixels, up to `pixels` up or
    down and up to `pixels` left or right, each move equally likely; the gap is filled with 0.
    Outside training it passes the images through.

    What `keras.layers.RandomTranslation(..., fill_mode="constant", interpolation="nearest")`
    does in whole pixels, for about half the time on a CPU (an epoch of `fast_shifted` 6 %
    longer than without moves, against 14 %; docs/speedrun.md): the move is two small matrix
    products per image (a row and a column selection), not a projective transform.

    Example:
        >>> x = RandomShift(2)(inputs)  # 25 positions per image
    """

    def __init__(self, pixels, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.pixels, self.seed = pixels, seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=None):
        if not training:
            return images
        moves = keras.random.randint(
            (keras.ops.shape(images)[0], 2), -self.pixels, self.pixels + 1, seed=self.seed_generator
        )
        return shift_images(images, moves)

    def get_config(self):
        return {**super().get_config(), "pixels": self.pixels, "seed": self.seed}


def shift_images(images, moves):
    """Images (n, h, w, c) moved by `moves` (n, 2): whole pixels down and right (negative: up
    and left), the gap filled with 0. An output row i is input row i - down: a product with a
    0/1 matrix that picks it (none where i - down is outside the image), and so for columns."""

    def picks(move, size):  # (n, size, size): [k, i, j] = 1 where j == i - move[k]
        out, source = keras.ops.arange(size)[:, None], keras.ops.arange(size)[None, :]
        chosen = keras.ops.equal(source[None], out[None] - move[:, None, None])
        return keras.ops.cast(chosen, images.dtype)

    rows = picks(moves[:, 0], images.shape[1])
    columns = picks(moves[:, 1], images.shape[2])
    return keras.ops.einsum("nij,njkc,nlk->nilc", rows, images, columns)
