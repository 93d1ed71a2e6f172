"""Planted LLM cross-entropy kernels (the spec's extensions), for tests/test_llm_extensions.py.

``reference`` composes the spec's definition in torch (scale -> softcap -> cross-entropy +
z-loss, labels shifted, a 'sum' over a normaliser) in float32 for half-precision inputs;
``reference_float64`` in float64, rounded once. Both must never be flagged. Every other
function carries one bug that LLM kernels have shipped; the default profile must catch each.
They are called through adapters/llm.py with :data:`FORM` (options by our names, a tuple
(loss, z_loss, lse) back).
"""
import torch
import torch.nn.functional as F

from conformance.adapters.llm import CallForm

HALF = (torch.float16, torch.bfloat16)
FORM = CallForm(options={o: o for o in ("weight", "ignore_index", "reduction", "label_smoothing", "logit_scale",
                                        "softcap", "z_loss", "return_z_loss", "return_lse", "normalizer", "shift")},
                returns={"loss": 0, "z_loss": 1, "lse": 2})


class _CollapseUpstream(torch.autograd.Function):
    """Identity forward; backward uses the first upstream element everywhere (the bug)."""

    @staticmethod
    def forward(ctx, a):
        return a.view_as(a)

    @staticmethod
    def backward(ctx, g):
        return g.reshape(-1)[:1].expand(g.numel()).reshape(g.shape) if g.numel() else g


def _shift(t, ignore_index, bug):
    out = torch.full_like(t, ignore_index)
    if t.numel() == 0:
        return out
    if bug == "shift_off_by_one":   # torch.roll: the last position takes the first label
        return torch.roll(t, -1, dims=0)
    out[:-1] = t[1:]
    return out


def _impl(bug, compute, logits, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0,
          logit_scale=1.0, softcap=None, z_loss=0.0, return_z_loss=False, return_lse=False, normalizer=None,
          shift=False):
    if softcap is not None and not softcap > 0:
        raise ValueError(f"softcap must be > 0, got {softcap}")
    if reduction not in ("none", "sum", "mean"):
        raise ValueError(f"{reduction} is not a valid value for reduction")
    dt = logits.dtype
    cdt = compute or (torch.float32 if dt in HALF else dt)
    x = logits.to(cdt) * logit_scale
    if softcap is not None:
        x = (x * torch.tanh(x / softcap)) if bug == "softcap_x_tanh" else softcap * torch.tanh(x / softcap)
    t = _shift(target, ignore_index, bug) if shift else target
    w = weight.to(cdt) if weight is not None else None
    C = x.shape[-1]
    if bug == "padded_lanes" and C % 16:
        x = torch.cat([x, torch.zeros(x.shape[0], 16 - C % 16, dtype=cdt)], dim=1)  # lanes padded with 0, not -inf
        if w is not None:
            w = torch.cat([w, torch.zeros(16 - C % 16, dtype=cdt)])
    if not (((t >= 0) & (t < C)) | (t == ignore_index)).all():
        raise IndexError("target out of bounds")
    ce = F.cross_entropy(x, t, weight=w, ignore_index=ignore_index, reduction="none", label_smoothing=label_smoothing)
    if bug == "padded_lanes" and C % 16 and label_smoothing:
        pass  # the padded lanes also enter the smoothing term: part of the same bug
    valid = t != ignore_index
    lse = torch.logsumexp(x, dim=-1)
    z = z_loss * lse ** 2 if z_loss else torch.zeros_like(lse)
    if bug != "z_loss_on_ignored":
        z = torch.where(valid, z, torch.zeros_like(z))
    per = ce + z
    wt = torch.ones_like(per) if w is None else w[torch.where(valid, t, 0)]
    den = torch.where(valid, wt, torch.zeros_like(wt)).sum()
    if bug == "upstream_collapsed" and reduction == "none":
        per = _CollapseUpstream.apply(per)

    def red(a):
        if reduction == "none":
            return a
        if reduction == "sum":
            if normalizer is not None:
                n = valid.sum().to(cdt) if bug == "normalizer_valid_count" else normalizer
                return a.sum() / n
            return a.sum()
        return torch.where(den == 0, torch.full_like(den, float('nan')), a.sum() / den)  # 0/0 and z/0: NaN

    return red(per).to(dt), red(z).to(dt).detach(), lse[:, None].to(dt).detach()


def reference(*a, **k):
    """Correct: the spec's composition, half precision computed in float32."""
    return _impl(None, None, *a, **k)


def reference_float64(*a, **k):
    """Correct and more accurate: everything in float64, rounded once."""
    return _impl(None, torch.float64, *a, **k)


def _bug(name):
    def f(*a, **k):
        return _impl(name, None, *a, **k)
    f.__name__ = name
    return f


softcap_x_tanh = _bug("softcap_x_tanh")
z_loss_on_ignored = _bug("z_loss_on_ignored")
padded_lanes = _bug("padded_lanes")
normalizer_valid_count = _bug("normalizer_valid_count")
shift_off_by_one = _bug("shift_off_by_one")
upstream_collapsed = _bug("upstream_collapsed")

CORRECT = ("reference", "reference_float64")
#: bug -> the checks that must catch it (at least one fails under the default profile)
BUGGY = {
    "softcap_x_tanh": ("extension.softcap",),
    "z_loss_on_ignored": ("extension.z_loss", "special.z_loss_all_ignored"),
    "padded_lanes": ("extension.z_loss", "extension.return_lse"),
    "normalizer_valid_count": ("extension.normalizer",),
    "shift_off_by_one": ("extension.shift",),
    "upstream_collapsed": ("extension.logit_scale",),
}
