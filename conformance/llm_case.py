"""The LLM-sized case: N = 8192 positions, C = 128256 classes, judged on the device.

At that size (10^9 logits) the spec interpreter, which runs NumPy on the CPU, is far too slow,
so this module evaluates the index-path formulas of specs/cross_entropy.yaml (no weight, no
smoothing, ignore_index = -100, reduction mean) in float64 on the accelerator, ``chunk`` (128) rows
at a time, and applies the spec's tolerance rule with the spec's constants. Because it restates
those formulas, tests/test_llm_case.py checks it against the spec oracle on small inputs:
any drift between the two fails there.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass


@dataclass
class LlmCaseResult:
    dtype: str
    rows: int
    classes: int
    device: str
    ok: bool
    loss: float
    exact: float
    loss_error_ulps: float
    loss_bound_ulps: float
    grad_bad_elements: int
    grad_max_ratio: float
    impl_ms: float
    impl_extra_gb: float
    oracle_ms: float
    oracle_extra_gb: float
    message: str = ""

    def to_json(self):
        return asdict(self)


def _ulp(v: float, dtype: str) -> float:
    mant, emin = {"float16": (10, -14), "bfloat16": (7, -126), "float32": (23, -126), "float64": (52, -1022)}[dtype]
    e = max(math.floor(math.log2(abs(v))) if v else emin, emin)
    return 2.0 ** (e - mant)


def run(fn=None, *, dtype: str = "bfloat16", rows: int = 8192, classes: int = 128256, device: str = "cuda",
        chunk: int = 128, ignored_share: float = 0.1, seed: int = 0, spec=None) -> LlmCaseResult:
    import torch
    import torch.nn.functional as F

    from .compare import Judge
    from .spec import load_default

    spec = spec or load_default()
    tol = spec.tolerances.dtypes[dtype]
    gam = Judge.gamma_unit(tol, max(rows, classes))
    fn = fn or F.cross_entropy
    tdt = getattr(torch, dtype)
    g = torch.Generator(device=device).manual_seed(seed)
    x = (torch.randn(rows, classes, generator=g, device=device, dtype=torch.float32) * 2).to(tdt)
    t = torch.randint(0, classes, (rows,), generator=g, device=device)
    t[torch.rand(rows, generator=g, device=device) < ignored_share] = -100
    cuda = device.startswith("cuda")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def mem():
        return torch.cuda.memory_allocated() if cuda else 0

    # -- the implementation: forward + backward, timed, with its extra memory
    xr = x.detach().requires_grad_(True)
    for _ in range(2 if cuda else 1):  # warm-up run first on a GPU
        xr.grad = None
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        base = mem()
        t0 = time.perf_counter()
        loss = fn(xr, t)
        loss.backward()
        sync()
        impl_ms = (time.perf_counter() - t0) * 1e3
        impl_extra = ((torch.cuda.max_memory_allocated() - base) if cuda else 0) / 1e9
    if xr.grad is None:
        raise RuntimeError(f"{getattr(fn, '__name__', fn)!s} gave no gradient for its input "
                           "(backward did not reach it)")
    grad = xr.grad.detach()
    loss_v = float(loss.detach().float())

    # -- the chunked float64 oracle of the spec's index path (see the module docstring):
    # one pass, `chunk` rows at a time, no host synchronisation inside the loop.
    def oracle():
        valid = t != -100
        den = valid.sum().double()
        logc = math.log(classes)
        total = torch.zeros((), dtype=torch.float64, device=device)
        scale = torch.zeros_like(total)
        bad = torch.zeros((), dtype=torch.int64, device=device)
        worst = torch.zeros_like(total)
        rows_ = torch.arange(min(chunk, rows), device=device)
        for s in range(0, rows, chunk):
            xc = x[s:s + chunk].double()
            tc = t[s:s + chunk].clamp(min=0)
            vc = valid[s:s + chunk]
            lse = torch.logsumexp(xc, dim=1, keepdim=True)
            xt = xc.gather(1, tc[:, None])[:, 0]
            l = torch.where(vc, lse[:, 0] - xt, 0.0)
            total += l.sum()
            m = xc.abs().amax(1)
            # tolerance: scale = sum|alpha| * (2 max|x| + log C + 1), alpha = one-hot target
            scale += torch.where(vc, 2 * m + logc + 1, 0.0).sum()
            # gradient of the mean: (softmax - one_hot) / den on valid rows, 0 elsewhere
            dl = xc.sub_(lse).exp_()
            dl[rows_[:dl.shape[0]], tc] -= 1.0
            dl.div_(den).mul_(vc[:, None])
            allowed = (tol.k_gradient * tol.u / den) * torch.where(vc, m + logc + 1, 0.0)[:, None] + tol.u * dl.abs()
            # any summation order (specs/README.md): gaccumulate 2 (C - 1) p and the den's (P - 1), in gamma units
            pa = dl.abs()
            pa[rows_[:dl.shape[0]], tc] += vc / den          # |dl| + 1/den at the target bounds p / den
            allowed.add_(pa.mul_(2 * (classes - 1) * gam).add_(dl.abs(), alpha=tol.k_reduce * gam * (rows - 1)))
            err = grad[s:s + chunk].double().sub_(dl).abs_()
            bad += (err > allowed + 1e-300).sum()
            worst = torch.maximum(worst, (err / (allowed + 1e-300)).max())
        exact_ = total / den
        bound_ = tol.k_forward * tol.u * scale / den + tol.u * exact_.abs()
        return exact_, bound_, total, bad, worst

    for _ in range(2 if cuda else 1):  # the first run on a GPU warms its kernels up
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        base = mem()
        t0 = time.perf_counter()
        exact_t, bound_t, total_t, bad_t, worst_t = oracle()
        sync()
        oracle_ms = (time.perf_counter() - t0) * 1e3
        oracle_extra = ((torch.cuda.max_memory_allocated() - base) if cuda else 0) / 1e9
    exact = float(exact_t)
    # a mean of non-negative terms, in any order: k_reduce * gamma(P - 1) for the sum and for den,
    # plus the logsumexp's gamma(C - 1) per valid row (specs/README.md, Tolerances)
    bound = float(bound_t) + 2 * tol.k_reduce * gam * (rows - 1) * abs(exact) + gam * (classes - 1)
    bad, worst = int(bad_t), float(worst_t)
    err_ulps = abs(loss_v - exact) / _ulp(exact, dtype)
    ok = math.isfinite(loss_v) and abs(loss_v - exact) <= bound and bad == 0
    msg = "" if ok else (f"loss {loss_v!r} vs exact {exact!r} (bound {bound:.3g}); {bad} gradient elements "
                         f"outside their bound (worst {worst:.3g}x)")
    return LlmCaseResult(dtype, rows, classes, device, ok, loss_v, exact, err_ulps, bound / _ulp(exact, dtype),
                         bad, worst, impl_ms, impl_extra, oracle_ms, oracle_extra, msg)
