"""Keras 3's cross-entropy losses (``from_logits=True``) as adapters, on the JAX backend.

- :class:`KerasSparseCategorical`: ``keras.losses.SparseCategoricalCrossentropy`` on class-index
  targets, ``ignore_index`` passed as ``ignore_class`` (Keras's own masking).
- :class:`KerasCategorical`: ``keras.losses.CategoricalCrossentropy`` on probability targets,
  with its ``label_smoothing``.

torch's reductions map onto Keras's: "none" -> ``None``, "sum" -> ``"sum"``, "mean" ->
``"sum_over_batch_size"`` (the default). The loss is built with ``dtype=`` the input dtype:
Keras would otherwise compute in its float32 policy (deliberately, for mixed precision), so the
configs declare float32/float64 only. Keras has no per-class weight. Configs:
keras_sparse.yaml, keras_categorical.yaml. KERAS_BACKEND defaults to jax here.
"""
from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

from conformance.adapters.base import Capabilities  # noqa: E402

from _jax_base import JaxLossAdapter, classes_last  # noqa: E402

_KERAS_REDUCTION = {"none": None, "sum": "sum", "mean": "sum_over_batch_size"}


class _KerasAdapter(JaxLossAdapter):
    def unavailable(self):
        try:
            import keras
        except ImportError:
            return "keras is not installed"
        if keras.backend.backend() != "jax":
            return f"this adapter needs KERAS_BACKEND=jax (keras uses {keras.backend.backend()!r})"
        return super().unavailable()

    def reduce(self, loss, case):
        return loss  # Keras reduces itself

    def info(self):
        import keras
        return {**super().info(), "keras": keras.__version__, "keras_backend": keras.backend.backend()}


class KerasSparseCategorical(_KerasAdapter):
    name = "keras-SparseCategoricalCrossentropy"
    capabilities = Capabilities(raises_on_invalid=False, features=frozenset({
        "index_target", "ignore_index", "reduction_none", "reduction_sum", "reduction_mean", "gradient",
        "nonfinite", "empty"}))

    def per_position(self, x, target, case):
        import keras
        loss = keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, ignore_class=case.ignore_index, reduction=_KERAS_REDUCTION[case.reduction],
            dtype=case.dtype)
        return loss(target, classes_last(x, case.class_axis))


class KerasCategorical(_KerasAdapter):
    name = "keras-CategoricalCrossentropy"
    capabilities = Capabilities(raises_on_invalid=False, features=frozenset({
        "probability_target", "label_smoothing", "reduction_none", "reduction_sum", "reduction_mean", "gradient",
        "gradient_target", "nonfinite", "empty"}))

    def per_position(self, x, target, case):
        import keras
        loss = keras.losses.CategoricalCrossentropy(
            from_logits=True, label_smoothing=case.label_smoothing, reduction=_KERAS_REDUCTION[case.reduction],
            dtype=case.dtype)
        ax = case.class_axis
        return loss(classes_last(target, ax), classes_last(x, ax))
