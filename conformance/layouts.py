"""Memory layouts of a case's arrays: what a kernel that assumes row-major contiguous input
reads wrongly.

A :class:`~conformance.case.Case` keeps its logical values and a ``layout`` name; this module
turns the arrays into NumPy *views* with that layout, which the adapters receive (the torch
adapter rebuilds the same strides and storage offset over a tensor buffer, see
:func:`strided_parts`; JAX arrays have no user-visible layout, so the JAX adapters see values
only). The names are the spec's ``domains.layouts``:

- ``contiguous``: fresh row-major arrays (what the suite always passed before);
- ``transposed``: column-major (the transpose of a contiguous buffer of the reversed shape);
- ``sliced``: every other element of a larger buffer, from a non-zero offset: strides are
  twice row-major and the storage offset is not 0, the padding holds NaN (floats) or other
  valid class ids (labels), so that reading past the view gives a different answer;
- ``channels_last``: inputs with spatial axes (rank >= 3) with the class axis innermost;
- ``expanded``: the logits of every batch entry are one row broadcast with stride 0 (the
  strategy makes them equal; a case whose batch entries differ keeps ``contiguous``).

The case's own arrays stay plain logical values (mutations and metamorphic transforms
edit them freely); :func:`arrays` builds the views ONCE, where the case is final: in the
adapter's conversion step (adapters/torch_adapter.py, adapters/numpy_ref.py), also inside an
isolated worker, which receives the case with its ``layout`` name. The padding is drawn
from a generator seeded by the array's size, so that the same case always gives the same
buffer.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

LAYOUTS = ("contiguous", "transposed", "sliced", "channels_last", "expanded")


def valid(layout: str, rank: int, batch: int | None = None) -> bool:
    """Whether ``layout`` means something for an input of ``rank`` (and batch size)."""
    if layout == "channels_last":
        return rank >= 3
    if layout == "transposed":
        return rank >= 2
    if layout == "expanded":
        return rank >= 2 and (batch is None or batch >= 2)
    return True


def _sliced(a: np.ndarray, fill) -> np.ndarray:
    n = a.size
    pad = 3
    root = np.empty(2 * n + pad + 1, dtype=a.dtype)
    root[:] = fill(root.size)
    item = a.itemsize
    row_major = [int(np.prod(a.shape[i + 1:], dtype=np.int64)) for i in range(a.ndim)]
    view = as_strided(root[pad:], shape=a.shape, strides=tuple(2 * s * item for s in row_major))
    view[...] = a
    return view


def _float_fill(dtype):
    return lambda n: np.full(n, np.nan).astype(dtype)


def _label_fill(C: int, seed: int):
    def fill(n):
        return np.random.default_rng(seed).integers(0, max(C, 1), size=n).astype(np.int64)
    return fill


def view(a: np.ndarray | None, layout: str, *, role: str, class_axis: int = 1, C: int = 1) -> np.ndarray | None:
    """``a`` (logical values) as a view with ``layout``. ``role``: "input" (logits or
    probabilities, input-shaped), "target" (class indices) or "weight"."""
    if a is None or layout == "contiguous":
        return a
    a = np.asarray(a)
    a = a if a.flags.c_contiguous else a.copy()  # (ascontiguousarray would make a 0-d label 1-d)
    if a.size == 0:
        return a
    if layout == "sliced":
        fill = _label_fill(C, a.size) if a.dtype.kind in "iu" else _float_fill(a.dtype)
        return _sliced(a, fill)
    if role == "weight":
        return a
    if layout == "transposed":
        return np.ascontiguousarray(a.transpose()).transpose() if a.ndim >= 2 else a  # a view of the buffer
    if layout == "channels_last":
        if role != "input" or a.ndim < 3:
            return a
        return np.moveaxis(np.ascontiguousarray(np.moveaxis(a, class_axis, -1)), -1, class_axis)
    if layout == "expanded":
        if role != "input" or a.ndim < 2 or a.shape[0] < 2 or not np.array_equal(a, np.broadcast_to(a[:1], a.shape),
                                                                                   equal_nan=True):
            return a
        return np.broadcast_to(a[:1].copy(), a.shape)  # the buffer holds one batch entry
    raise ValueError(f"unknown layout {layout!r} (known: {', '.join(LAYOUTS)})")


def arrays(case) -> dict[str, np.ndarray]:
    """The arguments of ``case`` ("input", "target" and "weight" when given) as the views
    its ``layout`` asks for. ``expanded`` on logits whose batch entries differ (a transform
    changed them) gives the contiguous arrays."""
    x, t, w = case.x, np.asarray(case.target), case.weight
    lay = case.layout
    if lay == "expanded" and not expandable(np.asarray(x)):
        lay = "contiguous"
    out = {"input": x, "target": t}
    if lay != "contiguous":
        C, ax = case.num_classes, case.class_axis
        out["input"] = view(x, lay, role="input", class_axis=ax, C=C)
        out["target"] = view(t, lay, role="input" if case.target_kind == "probability" else "target",
                             class_axis=ax, C=C)
        w = view(w, lay, role="weight", C=C)
    if w is not None:
        out["weight"] = w
    return out


def expandable(x: np.ndarray) -> bool:
    return x.ndim >= 2 and x.shape[0] >= 2 and np.array_equal(x, np.broadcast_to(x[:1], x.shape), equal_nan=True)


def describe(a: np.ndarray | None) -> dict | None:
    """Strides (in elements) and storage offset of a view, for reports."""
    if a is None:
        return None
    parts = strided_parts(np.asarray(a))
    if parts is None:
        return {"strides": [s // max(a.itemsize, 1) for s in a.strides], "offset": 0}
    _root, offset, strides = parts
    return {"strides": list(strides), "offset": offset}


def strided_parts(a: np.ndarray):
    """``(root, offset, strides)`` in elements such that ``a`` is the strided view of the 1-D
    buffer ``root`` from ``offset``, or None when ``a`` is not such a view (negative strides,
    a buffer that is not contiguous): then a copy is all an adapter can pass."""
    if not isinstance(a, np.ndarray) or a.size == 0:
        return None
    root, b = a, a
    while True:
        nb = getattr(b, "base", None)
        if nb is None:
            break
        if isinstance(nb, np.ndarray):
            root = nb
        b = nb
    if root is a or not root.flags.c_contiguous or root.dtype != a.dtype:
        return None
    item = a.itemsize
    off = a.__array_interface__["data"][0] - root.__array_interface__["data"][0]
    if off < 0 or off % item or any(s < 0 or s % item for s in a.strides):
        return None
    strides = tuple(s // item for s in a.strides)
    last = off // item + sum((n - 1) * s for n, s in zip(a.shape, strides))
    if last >= root.size:
        return None
    return root.reshape(-1), off // item, strides
