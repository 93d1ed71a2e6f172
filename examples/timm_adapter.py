"""timm's cross-entropy modules as F.cross_entropy-style callables.

``timm.loss`` imports the whole timm package, whose layers import torchvision; PyPI's
torchvision does not import beside this suite's torch build. ``timm/loss/cross_entropy.py``
itself needs only torch, so it is loaded from timm's installed folder without running
``timm/__init__.py``. (With torchvision importable, ``from timm.loss import ...`` is the same
code.)

- :func:`label_smoothing_ce`: ``LabelSmoothingCrossEntropy(smoothing=eps)(x, target)``: (N, C)
  logits, class-index targets, always the mean, no weight or ignore_index.
- :func:`soft_target_ce`: ``SoftTargetCrossEntropy()(x, target)``: (N, C) probability targets,
  always the mean.

Arguments timm does not take are refused with TypeError (the configs declare them
unsupported, so the suite does not send them). Configs: timm_label_smoothing.yaml,
timm_soft_target.yaml.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path


def _module():
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("timm is not installed (pip install --no-deps timm)")
    path = Path(list(spec.submodule_search_locations)[0]) / "loss" / "cross_entropy.py"
    mspec = importlib.util.spec_from_file_location("_timm_loss_cross_entropy", path)
    mod = importlib.util.module_from_spec(mspec)
    mspec.loader.exec_module(mod)
    return mod


_MOD = _module()
LabelSmoothingCrossEntropy = _MOD.LabelSmoothingCrossEntropy
SoftTargetCrossEntropy = _MOD.SoftTargetCrossEntropy


def _refuse(weight, ignore_index, reduction, extra):
    if weight is not None or ignore_index != -100 or reduction != "mean" or any(v is not None for v in extra.values()):
        raise TypeError("timm's loss takes no weight, ignore_index, reduction other than mean, or size_average/reduce")


def label_smoothing_ce(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0, **extra):
    _refuse(weight, ignore_index, reduction, extra)
    return LabelSmoothingCrossEntropy(smoothing=label_smoothing)(input, target)


def soft_target_ce(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0, **extra):
    _refuse(weight, ignore_index, reduction, extra)
    if label_smoothing != 0:
        raise TypeError("SoftTargetCrossEntropy takes no label smoothing")
    return SoftTargetCrossEntropy()(input, target)
