"""Shared plumbing of the JAX-library example adapters (optax, keras on JAX): put the case's
arrays on the CPU, apply the reduction the library leaves to its caller, and differentiate
with ``jax.vjp``. Subclasses implement :meth:`per_position` (and may override
:meth:`reduce`)."""
from __future__ import annotations

import numpy as np

from conformance.adapters.base import Adapter, Capabilities, Result
from conformance.adapters.jax_adapter import configure_jax


class JaxLossAdapter(Adapter):
    framework = "jax"
    device = "cpu"
    capabilities = Capabilities(raises_on_invalid=False)

    def __init__(self):
        configure_jax()  # float64 on, as the suite needs for float64 cases

    def unavailable(self) -> str | None:
        try:
            import jax  # noqa: F401
        except ImportError:
            return "jax is not installed"
        return None

    # ------------------------------------------------------------------ to implement
    def per_position(self, x, target, case):
        """The library's loss for each position: shape (N, d...) or () for an unbatched input;
        ``x`` keeps torch's layout (class axis 1, or 0 when unbatched)."""
        raise NotImplementedError

    def reduce(self, loss, case):
        """torch's reductions applied around a per-position loss (mean over positions)."""
        import jax.numpy as jnp
        if case.reduction == "none":
            return loss
        if case.reduction == "sum":
            return jnp.sum(loss)
        if case.reduction == "mean":
            return jnp.mean(loss)
        raise ValueError(f"unknown reduction {case.reduction!r}")

    # ------------------------------------------------------------------ protocol
    def call(self, case, *, gradient: bool = False) -> Result:
        import jax
        import jax.numpy as jnp

        dev = jax.devices(self.device)[0]
        put = lambda a: jax.device_put(np.asarray(a), dev)  # noqa: E731
        if case.legacy:
            raise TypeError("size_average/reduce are not supported")
        x, target = put(case.x), put(case.target)

        def f(a, t):
            return self.reduce(self.per_position(a, t, case), case)

        if not gradient:
            return Result(np.asarray(f(x, target)))
        prob = case.target_kind == "probability"
        if prob:
            out, vjp = jax.vjp(f, x, target)
        else:
            out, vjp = jax.vjp(lambda a: f(a, target), x)
        g = (put(np.asarray(case.upstream).reshape(out.shape)).astype(out.dtype)
             if case.upstream is not None else jnp.ones_like(out))
        got = vjp(g)
        return Result(np.asarray(out), dict(zip(("input", "target"), (np.asarray(v) for v in got))))


def classes_last(a, class_axis: int):
    """Move the class axis to the end (torch keeps it at 1; these libraries want -1)."""
    import jax.numpy as jnp
    return jnp.moveaxis(a, class_axis, -1)
