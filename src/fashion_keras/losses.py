"""The project's loss: cross-entropy of logits against class indices, with label smoothing.

Keras 3's `SparseCategoricalCrossentropy` takes class indices but has no `label_smoothing`;
`CategoricalCrossentropy` has it but takes one-hot targets. `SmoothedSparseCrossentropy` is
the second applied to the indices made one-hot, so the data, metrics and reports keep their
class indices. `training.label_smoothing` in a config chooses it (`train.compile_model`).

Import this module before `keras.saving.load_model` on a model compiled with it (as
`models.load_model` does)."""

import keras


@keras.saving.register_keras_serializable(package="fashion_keras")
class SmoothedSparseCrossentropy(keras.losses.Loss):
    """Cross-entropy against class indices, each target spread by `label_smoothing`.

    With `k` classes, the true class's target is `1 - label_smoothing + label_smoothing / k`
    and every other class's `label_smoothing / k`. `y_pred` are logits.

    Example:
        >>> loss = SmoothedSparseCrossentropy(label_smoothing=0.1)
        >>> model.compile(optimizer="adam", loss=loss, metrics=["accuracy"])
    """

    def __init__(self, label_smoothing=0.1, name="smoothed_sparse_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = label_smoothing

    def call(self, y_true, y_pred):
        indices = keras.ops.reshape(keras.ops.cast(y_true, "int32"), (-1,))
        targets = keras.ops.one_hot(indices, y_pred.shape[-1])
        return keras.losses.categorical_crossentropy(
            targets, y_pred, from_logits=True, label_smoothing=self.label_smoothing
        )

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}
