"""optax's cross-entropy losses as adapters, as a user of optax would call them.

- :class:`OptaxSoftmaxCrossEntropy`: ``optax.softmax_cross_entropy(logits, labels)`` on
  probability targets (class axis moved last), label smoothing through
  ``optax.smooth_labels`` (optax's own recipe), the batch reduced by ``.mean()``/``.sum()``.
- :class:`OptaxIntegerLabels`: ``optax.softmax_cross_entropy_with_integer_labels`` on
  class-index targets; optax has no weight, ignore_index or label smoothing for it.

optax returns a per-example loss and leaves the reduction to the caller: the adapters apply
torch's ``mean`` (over positions) and ``sum``. Configs: optax_softmax.yaml, optax_integer.yaml.
"""
from __future__ import annotations

from conformance.adapters.base import Capabilities

from _jax_base import JaxLossAdapter, classes_last  # noqa: E402  (the config's folder is on sys.path)


class OptaxSoftmaxCrossEntropy(JaxLossAdapter):
    name = "optax-softmax_cross_entropy"
    capabilities = Capabilities(raises_on_invalid=False, features=frozenset({
        "probability_target", "label_smoothing", "reduction_none", "reduction_sum", "reduction_mean",
        "gradient", "gradient_target", "nonfinite", "empty"}))

    def per_position(self, x, target, case):
        import optax
        ax = case.class_axis
        labels = classes_last(target, ax)
        if case.label_smoothing != 0:
            labels = optax.smooth_labels(labels, case.label_smoothing)
        return optax.softmax_cross_entropy(classes_last(x, ax), labels)

    def info(self):
        import optax
        return {**super().info(), "optax": optax.__version__}


class OptaxIntegerLabels(JaxLossAdapter):
    name = "optax-softmax_cross_entropy_with_integer_labels"
    capabilities = Capabilities(raises_on_invalid=False, features=frozenset({
        "index_target", "reduction_none", "reduction_sum", "reduction_mean", "gradient", "nonfinite", "empty"}))

    def per_position(self, x, target, case):
        import optax
        return optax.softmax_cross_entropy_with_integer_labels(classes_last(x, case.class_axis), target)

    def info(self):
        import optax
        return {**super().info(), "optax": optax.__version__}
