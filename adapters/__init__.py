"""Stage 4 of the pipeline: the implementations under test, behind one protocol.

Layout (installed as ``conformance.adapters``; never import it as ``adapters``):

- :mod:`.base`: the protocol (:class:`Adapter`, :class:`Capabilities`, :class:`Result`,
  :class:`InputsMutated`).
- :mod:`.numpy_ref`: an independent NumPy implementation ("numpy") and a wrapper for any
  NumPy function (``numpy:pkg.module:attr``); also the shared argument checks.
- :mod:`.torch_adapter`: any callable with F.cross_entropy's signature or any nn.Module class
  with nn.CrossEntropyLoss's constructor ("torch-cpu", "torch-module-cpu", "torch-cuda").
- :mod:`.jax_adapter`: a jitted JAX implementation ("jax-cpu", "jax-gpu") and a wrapper for
  any JAX function (``jax:pkg.module:attr``).
- an adapter config file (``path/to/adapter.yaml``): any of the above plus declared
  capabilities, variants and a known-divergence file (:mod:`conformance.adapter_config`).

Frameworks are imported lazily: this package imports with NumPy alone, and an adapter whose
framework or device is missing says why through ``unavailable()``.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable

from conformance.adapters.base import Adapter, AdapterError
from conformance.adapters.jax_adapter import JaxCallableAdapter, jax_cpu, jax_gpu
from conformance.adapters.numpy_ref import NumpyAdapter, NumpyCallableAdapter
from conformance.adapters.torch_adapter import (
    ModuleClassAdapter,
    TorchFunctionAdapter,
    torch_cpu,
    torch_cuda,
    torch_module_cpu,
)
from conformance.diagnostics import did_you_mean

BUILTINS: dict[str, Callable[[], Adapter]] = {
    "numpy": NumpyAdapter,
    "torch-cpu": torch_cpu,
    "torch-module-cpu": torch_module_cpu,
    "jax-cpu": jax_cpu,
    "torch-cuda": torch_cuda,
    "jax-gpu": jax_gpu,
    # the linear form (specs/linear_cross_entropy.yaml): not in the default run of cross_entropy.yaml
    "torch-linear": lambda: __import__("conformance.adapters.linear", fromlist=["torch_linear"]).torch_linear(),
}
DEFAULT_ADAPTERS = ["numpy", "torch-cpu", "jax-cpu", "torch-cuda", "jax-gpu"]

_SYNTAX = ("a builtin name, 'pkg.module:attr' (a torch function, an nn.Module class or an "
           "Adapter), 'jax:pkg.module:attr', 'numpy:pkg.module:attr' or an adapter config file "
           "'path/to/adapter.yaml'")


def _load(spec: str, target: str):
    modname, _, attr = target.partition(":")
    if not modname or not attr:
        raise AdapterError(f"adapter {spec!r}: expected 'pkg.module:attr' after the prefix; "
                           f"fix: write it as {_SYNTAX}")
    try:
        obj = importlib.import_module(modname)
    except ImportError as exc:
        raise AdapterError(f"adapter {spec!r}: cannot import module {modname!r} ({exc}); fix: install "
                           f"it or put its folder on PYTHONPATH, and check the spelling") from exc
    for i, part in enumerate(attr.split(".")):
        if not hasattr(obj, part):
            here = modname + (":" + ".".join(attr.split(".")[:i]) if i else "")
            hint = did_you_mean(part, [n for n in dir(obj) if not n.startswith("_")], n=3)
            raise AdapterError(f"adapter {spec!r}: {here} has no attribute {part!r}{hint}; fix: name an "
                               f"attribute that the module defines")
        obj = getattr(obj, part)
    return obj


def _is_torch_module_class(obj) -> bool:
    if not isinstance(obj, type):
        return False
    try:
        import torch
    except ImportError:
        return False
    return issubclass(obj, torch.nn.Module)


def resolve(spec: str) -> Adapter:
    """The adapter named by ``spec``: see the module docstring for the accepted forms, plus
    an adapter config file (``path/to/adapter.yaml``, see conformance/adapter_config.py).
    The result remembers how to build it again as ``source`` (``spec``; a config file's
    absolute path): reproduction scripts and isolated child processes resolve that."""
    adapter = _resolve(spec)
    try:
        adapter.source = adapter.config_file or spec
    except AttributeError:  # an adapter with __slots__: the scripts fall back to its name
        pass
    return adapter


def _resolve(spec: str) -> Adapter:
    if spec.lower().endswith((".yaml", ".yml")):
        from pathlib import Path

        from conformance.adapter_config import adapter_from_config
        if not Path(spec).is_file():
            raise AdapterError(f"adapter config file {spec!r} does not exist; fix: check the path "
                               f"(relative to the current folder {str(Path.cwd())!r})")
        return adapter_from_config(spec, resolve)
    if spec in BUILTINS:
        return BUILTINS[spec]()
    prefix, _, rest = spec.partition(":")
    if prefix in ("jax", "numpy"):
        obj = _load(spec, rest)
        if not callable(obj):
            raise AdapterError(f"adapter {spec!r}: {rest} is not callable; fix: name a function")
        return (JaxCallableAdapter if prefix == "jax" else NumpyCallableAdapter)(obj, name=spec)
    if ":" not in spec:
        hint = did_you_mean(spec, BUILTINS, prefix="", suffix=" ")
        raise AdapterError(f"unknown adapter {spec!r}; {hint}builtins: {', '.join(BUILTINS)}; "
                           f"fix: give {_SYNTAX}")
    obj = _load(spec, spec)
    if isinstance(obj, type) and issubclass(obj, Adapter):
        return obj()
    if isinstance(obj, Adapter):
        return obj
    if _is_torch_module_class(obj):
        return ModuleClassAdapter(obj, name=spec)
    if callable(obj):
        return TorchFunctionAdapter(obj, name=spec)
    raise AdapterError(f"adapter {spec!r}: {type(obj).__name__} object is neither an Adapter nor "
                       f"callable; fix: name an Adapter, a function or an nn.Module class")


__all__ = ["Adapter", "AdapterError", "BUILTINS", "DEFAULT_ADAPTERS", "JaxCallableAdapter",
           "ModuleClassAdapter", "NumpyAdapter", "NumpyCallableAdapter", "TorchFunctionAdapter",
           "resolve"]
