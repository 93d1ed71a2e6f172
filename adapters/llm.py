"""Adapter form for the cross-entropy kernels LLM training uses, whose signatures are not
``F.cross_entropy``'s: a declared :class:`CallForm` says how a case becomes their call.

A form states the argument order (``args``: which positional argument is the logits, the
labels, the hidden states, the classifier, the bias), the layout (``flat``: (P, C) logits and
(P,) labels, as Liger takes them; ``sequence``: (N, T, C) and (N, T), as transformers and
cut-cross-entropy take them), the keyword each option goes to (``options``: our name -> theirs,
with the spec's extensions among them; a name left out is unsupported), and where the results
are (``returns``: our output name -> tuple index or attribute; "loss" alone for a tensor).
The capabilities follow from the form, so an option the API lacks is never sent.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from conformance.adapters.base import ALL_FEATURES, LINEAR, Adapter, Capabilities, InputsMutated, Result
from conformance.adapters.torch_adapter import _same_bits, to_numpy, to_tensor
from conformance.case import Case

#: Our option names: F.cross_entropy's plus the spec's extensions (and return_z_loss).
OPTIONS = ("weight", "ignore_index", "reduction", "label_smoothing", "logit_scale", "softcap", "z_loss",
           "return_z_loss", "return_lse", "normalizer", "shift")
EXTENSION_OPTIONS = ("logit_scale", "softcap", "z_loss", "return_z_loss", "return_lse", "normalizer", "shift")
ARGS = ("logits", "target", "hidden", "classifier", "bias")
LAYOUTS = ("flat", "sequence")


@dataclass(frozen=True)
class CallForm:
    """How a case is passed to an LLM cross-entropy API (see the module docstring)."""

    args: tuple[str, ...] = ("logits", "target")
    layout: str = "flat"
    options: dict[str, str] = field(default_factory=lambda: {o: o for o in ("weight", "ignore_index", "reduction",
                                                                             "label_smoothing")})
    returns: dict[str, Any] = field(default_factory=lambda: {"loss": None})
    #: Constant keyword arguments always passed (e.g. impl="torch_compile").
    fixed: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        bad = [a for a in self.args if a not in ARGS] + [o for o in self.options if o not in OPTIONS]
        if bad:
            raise ValueError(f"unknown argument or option {bad[0]!r}: use {', '.join(ARGS + OPTIONS)}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown layout {self.layout!r}: use {' or '.join(LAYOUTS)}")
        lin = {"hidden", "classifier"} & set(self.args)
        if lin and (lin != {"hidden", "classifier"} or "logits" in self.args):
            raise ValueError("a linear form takes both 'hidden' and 'classifier' (and optionally 'bias'), not 'logits'")
        if "bias" in self.args and not lin:
            raise ValueError("'bias' belongs to the linear form: add 'hidden' and 'classifier'")
        if "loss" not in self.returns:
            raise ValueError("returns must say where the loss is ('loss': null for a plain tensor)")

    def capabilities(self, base: Capabilities = Capabilities()) -> Capabilities:  # noqa: B008 (frozen: sharing is safe)
        opts = set(self.options)
        drop = {f for f, o in (("weight", "weight"), ("ignore_index", "ignore_index"),
                               ("label_smoothing", "label_smoothing")) if o not in opts}
        drop |= {"probability_target", "gradient_target", "legacy_arguments"}
        if "reduction" not in opts:
            drop |= {"reduction_none", "reduction_mean"}  # a fixed 'sum' (with a normaliser) or 'mean'
        if "hidden" in self.args:   # the linear form: hidden (P, H), classifier (C, H), bias (C,)
            drop -= {"linear_bias"}
            if "bias" not in self.args:
                drop.add("linear_bias")
        else:
            drop.add("linear_bias")
        ranks = frozenset({2}) if self.layout == "flat" else frozenset({3})
        ext = {o for o in EXTENSION_OPTIONS if o in opts}
        if "return_z_loss" in ext and "z_loss" in self.returns:
            ext.add("return_z_loss")
        else:
            ext.discard("return_z_loss")
        if "return_lse" in ext and "lse" not in self.returns:
            ext.discard("return_lse")
        features = frozenset(ALL_FEATURES) - drop | ({LINEAR} if "hidden" in self.args else frozenset())
        return replace(base, features=features, ranks=ranks, extensions=frozenset(ext))


class LlmTorchAdapter(Adapter):
    """A torch callable of an LLM cross-entropy API, called through a :class:`CallForm`."""

    framework = "torch"

    def __init__(self, fn: Callable, name: str, form: CallForm = CallForm(), device: str = "cpu",
                 capabilities: Capabilities | None = None):
        self.fn, self.name, self.form, self.device = fn, name, form, device
        self.capabilities = capabilities or form.capabilities()

    def unavailable(self) -> str | None:
        try:
            import torch  # noqa: F401
        except ImportError:
            return "torch is not installed"
        return None

    def _layout(self, case: Case, a, *, labels: bool):
        """(N, C, T) -> (N, T, C) for the sequence layout; labels (N, T) stay."""
        if self.form.layout == "sequence" and not labels:
            return a.movedim(1, -1).contiguous()
        return a

    def inputs(self, case: Case) -> dict[str, Any]:
        """The tensors of the call, keyed by ARGS names (logits form, or the linear form's
        hidden states, classifier and bias)."""
        if case.linear is not None:
            b = case.linear.get("bias")
            return {"hidden": to_tensor(case.linear["hidden"], self.device),
                    "classifier": to_tensor(case.linear["classifier"], self.device),
                    "bias": None if b is None else to_tensor(b, self.device),
                    "target": to_tensor(case.target, self.device)}
        x = self._layout(case, to_tensor(case.x, self.device), labels=False)
        return {"logits": x, "target": to_tensor(case.target, self.device)}

    def kwargs(self, case: Case, tensors: dict) -> dict[str, Any]:
        ours: dict[str, Any] = {"ignore_index": case.ignore_index, "reduction": case.reduction,
                                "label_smoothing": case.label_smoothing, "weight": tensors.get("weight")}
        ours.update(case.extensions)
        if "normalizer" in case.extensions and "reduction" in self.form.options:
            ours["reduction"] = "sum"
        kw = {theirs: ours[o] for o, theirs in self.form.options.items() if o in ours}
        for o in ("weight", "label_smoothing"):  # at their identity, defaults are left alone
            if o in self.form.options and (ours[o] is None or (o == "label_smoothing" and ours[o] == 0)):
                kw.pop(self.form.options[o], None)
        return {**self.form.fixed, **kw}

    def call(self, case: Case, *, gradient: bool = False) -> Result:
        import torch

        tensors = self.inputs(case)
        if case.weight is not None:
            tensors["weight"] = to_tensor(case.weight, self.device)
        pristine = {k: v.clone() for k, v in tensors.items() if v is not None}
        diff = [k for k in ("logits", "hidden", "classifier", "bias") if tensors.get(k) is not None]
        if gradient:
            for k in diff:
                tensors[k].requires_grad_(True)
        args = [tensors.get(a) for a in self.form.args]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = self.fn(*args, **self.kwargs(case, tensors))
        got = {}
        for name, where in self.form.returns.items():
            v = out if where is None else (out[where] if isinstance(where, int) else getattr(out, where))
            got[name] = v
        loss = got["loss"]
        grads = {}
        if gradient:
            g = torch.ones_like(loss) if case.upstream is None else \
                to_tensor(case.upstream, self.device).to(loss.dtype).reshape(loss.shape)
            gs = torch.autograd.grad(loss, [tensors[k] for k in diff], g, allow_unused=True)
            for k, d in zip(diff, gs):
                d = torch.zeros_like(tensors[k]) if d is None else d
                if k == "logits" and self.form.layout == "sequence":
                    d = d.movedim(-1, 1)
                grads["input" if k == "logits" else k] = to_numpy(d)
        changed = [k for k, v in pristine.items() if not _same_bits(tensors[k].detach(), v)]
        if changed:
            raise InputsMutated(changed)
        outputs = {}
        for name in ("z_loss", "lse"):
            if name in got and got[name] is not None and self._asked(case, name):
                outputs[name] = to_numpy(got[name]).reshape(case.none_shape) if name == "lse" else to_numpy(got[name])
        return Result(to_numpy(loss), grads, [f"{w.category.__name__}: {w.message}" for w in caught], outputs)

    @staticmethod
    def _asked(case: Case, name: str) -> bool:
        return bool(case.extensions.get("return_z_loss" if name == "z_loss" else "return_lse"))


def form_from_dict(d: dict[str, Any]) -> CallForm:
    """A CallForm from a YAML config's ``form:`` mapping (validated by CallForm itself)."""
    kw = dict(d)
    if "args" in kw:
        kw["args"] = tuple(kw["args"])
    if "options" in kw:
        kw["options"] = {k: (v if v is not None else k) for k, v in dict(kw["options"]).items()}
    if "returns" in kw:
        r = kw["returns"]
        kw["returns"] = {"loss": None} if r in (None, "loss") else dict(r)
    return CallForm(**kw)
