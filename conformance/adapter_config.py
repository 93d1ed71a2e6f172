"""Adapter configuration files: a YAML file that names an implementation and declares what it
supports, so that a third-party loss can be gated without writing Python for it.

``resolve("path/to/adapter.yaml")`` (and so ``ce-conformance run --adapter path/to/adapter.yaml``)
reads one of these::

    name: my-loss                    # the adapter's name in results (default: the file's stem)
    import: mypkg.losses:cross_entropy   # anything resolve() accepts, except another .yaml
    device: cpu                      # cpu, cuda, cuda:N, gpu (JAX), ...
    unsupported: [weight, label_smoothing]   # feature names (adapters/base.py ALL_FEATURES)
    dtypes: [float32, float64]       # replaces the adapter's own list
    ranks: [2]                       # input ranks, 1 = unbatched (C,)
    variants: [all_ignored_mean_zero]  # names from the spec's `variants:` section
    raises_on_invalid: true          # false: invalid *data* cannot raise (jitted code)
    max_classes: 1000
    known: my-loss.known.yaml        # known-divergence file, relative to this file
    world_size: 2                    # distributed adapters only (adapters/vocab_parallel.py)
    form:                            # an LLM kernel's call (adapters/llm.py CallForm): the
      args: [logits, target]         # import is then the bare function, wrapped in an
      layout: flat                   # LlmTorchAdapter; options: ours -> their keyword
      options: {reduction: reduction, z_loss: lse_square_scale}
      returns: {loss: 0, z_loss: 1}  # or 'loss' for a plain tensor
      fixed: {}                      # constant keyword arguments

Keys left out keep what the imported adapter declares. The config's folder is put on
``sys.path`` first, so ``import: my_adapter:MyAdapter`` finds ``my_adapter.py`` next to it.
Every error names the file and line and says how to fix it (unknown keys get a did-you-mean).
"""
from __future__ import annotations

import copy
import re
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from conformance import safe_yaml
from conformance.adapters.base import ALL_FEATURES, Adapter, AdapterError
from conformance.diagnostics import YamlLocator, did_you_mean

KEYS = ("name", "import", "device", "unsupported", "dtypes", "ranks", "variants", "raises_on_invalid",
        "max_classes", "known", "world_size", "form")
CONFIG_SUFFIXES = (".yaml", ".yml")
_DEVICE = re.compile(r"^(cpu|gpu|tpu|mps|xpu|cuda(:\d+)?)$")
_NAME = re.compile(r"^[A-Za-z0-9_.:+@-]+$")


class AdapterConfigError(AdapterError):
    """A config file that cannot be used; the message names file:line and the fix."""

    def __init__(self, file: str, line: int | None, message: str, fix: str | None = ""):
        super().__init__(message, file, line, None, fix)


def is_config_name(spec: str) -> bool:
    return spec.lower().endswith(CONFIG_SUFFIXES)


# --------------------------------------------------------------------------- YAML with lines
def load_with_lines(path: str | Path, *, what: str) -> tuple[Any, YamlLocator]:
    """The document at ``path`` and where each of its values is (``where.line(path)``: the
    1-based line of a key or list item). Read with the bounded loader of
    :mod:`conformance.safe_yaml`, as specs are; known-divergence files use it too."""
    try:
        doc, node = safe_yaml.load_file(path, what=what)  # bounded: aliases, depth, size
    except safe_yaml.YamlFileError as exc:
        raise AdapterConfigError(str(path), exc.line, exc.problem, exc.fix) from None
    return doc, YamlLocator(node)


# --------------------------------------------------------------------------- the config
def _spec_vocabulary():
    from conformance.spec import load_default

    spec = load_default()
    return spec.domains["dtypes"], spec.domains["ranks"], list(spec.variants)


def load_config(path: str | Path) -> dict[str, Any]:
    """Validate an adapter config and return it with ``known`` made absolute."""
    f = str(path)
    doc, where = load_with_lines(path, what="adapter config")
    if not isinstance(doc, dict):
        raise AdapterConfigError(f, 1, "an adapter config is a mapping with at least an 'import' key",
                                 "see docs/gating.md, e.g. 'import: mypkg.losses:cross_entropy'")

    def err(key, message, fix, *, index=None):
        at = (key,) if index is None else (key, index)
        return AdapterConfigError(f, where.line(at), message, fix)

    for k in doc:
        if k not in KEYS:
            raise err(k, f"unknown key {k!r}{did_you_mean(k, KEYS)}", f"use one of {', '.join(KEYS)}")
    if "import" not in doc:
        raise AdapterConfigError(f, 1, "missing key 'import'",
                                 "add 'import: pkg.module:attr' (or jax:/numpy: prefixed, or a builtin name)")
    imp = doc["import"]
    if not isinstance(imp, str) or not imp.strip():
        raise err("import", "'import' must be a string", "write e.g. 'import: mypkg.losses:cross_entropy'")
    if is_config_name(imp):
        raise err("import", f"'import' names another config file ({imp})",
                  "name the implementation itself ('pkg.module:attr' or a builtin)")
    out: dict[str, Any] = {"file": str(Path(path).resolve()), "import": imp.strip(),
                           "import_line": where.line(("import",))}

    name = doc.get("name", Path(path).stem)
    if not isinstance(name, str) or not _NAME.match(name):
        raise err("name", f"'name' must be a word of letters, digits and ._:+@- (got {name!r})",
                  "write e.g. 'name: my-loss'")
    out["name"] = name

    if "device" in doc:
        dev = doc["device"]
        if not isinstance(dev, str) or not _DEVICE.match(dev):
            raise err("device", f"unknown device {dev!r}{did_you_mean(dev, ['cpu', 'cuda', 'gpu', 'tpu', 'mps'])}",
                      "use cpu, cuda, cuda:N (torch), gpu or tpu (JAX)")
        out["device"] = dev

    def names(key: str, vocabulary, what: str, where: str) -> list[str]:
        """A list of names from ``vocabulary``; an unknown one is an error at its line."""
        got = _str_list(doc[key], key, err)
        for i, x in enumerate(got):
            if x not in vocabulary:
                raise err(key, f"unknown {what} {x!r}{did_you_mean(x, vocabulary)}",
                          f"use names from {where}", index=i)
        return got

    if "unsupported" in doc:
        out["unsupported"] = names("unsupported", ALL_FEATURES, "feature", ", ".join(sorted(ALL_FEATURES)))

    dtypes, ranks, variants = _spec_vocabulary()
    if "dtypes" in doc:
        ds = names("dtypes", dtypes, "dtype", ", ".join(dtypes))
        if not ds:
            raise err("dtypes", "'dtypes' is empty", "list at least one dtype")
        out["dtypes"] = ds
    if "ranks" in doc:
        rs = doc["ranks"]
        if not isinstance(rs, list) or not rs or not all(isinstance(r, int) and not isinstance(r, bool) for r in rs):
            raise err("ranks", "'ranks' must be a non-empty list of integers", "write e.g. 'ranks: [1, 2, 3]'")
        for i, r in enumerate(rs):
            if r not in ranks:
                raise err("ranks", f"rank {r} is outside the spec's ranks {ranks}",
                          "input ranks count the class axis: 1 is an unbatched (C,), 2 is (N, C)", index=i)
        out["ranks"] = rs
    if "variants" in doc:
        out["variants"] = names("variants", variants, "variant",
                                f"the spec's variants: section ({', '.join(variants)})")
    if "raises_on_invalid" in doc:
        if not isinstance(doc["raises_on_invalid"], bool):
            raise err("raises_on_invalid", "'raises_on_invalid' must be true or false",
                      "write 'raises_on_invalid: false' for code that cannot raise on data (jitted)")
        out["raises_on_invalid"] = doc["raises_on_invalid"]
    if "max_classes" in doc:
        m = doc["max_classes"]
        if m is not None and (not isinstance(m, int) or isinstance(m, bool) or m < 1):
            raise err("max_classes", f"'max_classes' must be a positive integer or null (got {m!r})",
                      "write e.g. 'max_classes: 1000'")
        out["max_classes"] = m
    if "known" in doc:
        k = doc["known"]
        if not isinstance(k, str):
            raise err("known", "'known' must be a path", "write e.g. 'known: my-loss.known.yaml'")
        kp = (Path(path).parent / k).resolve()
        if not kp.is_file():
            raise err("known", f"known-divergence file {str(kp)!r} does not exist",
                      "the path is relative to the config file's folder")
        out["known"] = str(kp)
    if "world_size" in doc:  # distributed adapters (adapters/vocab_parallel.py): ranks to run on
        ws = doc["world_size"]
        if not isinstance(ws, int) or isinstance(ws, bool) or not 1 <= ws <= 64:
            raise err("world_size", f"'world_size' must be an integer from 1 to 64 (got {ws!r})",
                      "write e.g. 'world_size: 2'")
        out["world_size"], out["world_size_line"] = ws, where.line(("world_size",))
    if "form" in doc:
        out["form"] = _form(doc["form"], where, err, f)
    return out


FORM_KEYS = ("args", "layout", "options", "returns", "fixed")


def _form(d, where: YamlLocator, err, f):
    """The ``form:`` mapping checked key by key (so each error has its own line), as a CallForm."""
    from conformance.adapters.llm import ARGS, LAYOUTS, OPTIONS, CallForm

    def at(*path, message, fix):
        line = where.line(("form",) + path)
        return AdapterConfigError(f, line, message, fix)

    if not isinstance(d, dict):
        raise err("form", "'form' must be a mapping", "write e.g. 'form: {args: [logits, target], returns: loss}'")
    for k in d:
        if k not in FORM_KEYS:
            raise at(k, message=f"unknown form key {k!r}{did_you_mean(k, FORM_KEYS)}",
                     fix=f"use {', '.join(FORM_KEYS)}")
    kw: dict[str, Any] = {}
    if "args" in d:
        a = d["args"]
        if not isinstance(a, list) or not a or not all(isinstance(x, str) for x in a):
            raise at("args", message="'args' must be a non-empty list of names",
                     fix="write e.g. 'args: [logits, target]'")
        for i, x in enumerate(a):
            if x not in ARGS:
                raise at("args", i, message=f"unknown argument {x!r}{did_you_mean(x, ARGS)}",
                         fix=f"use {', '.join(ARGS)}")
        linear = "hidden" in a or "classifier" in a
        if not linear and ("logits" not in a or "target" not in a):
            raise at("args", message="'args' must place both logits and target",
                     fix="write e.g. 'args: [logits, target]'")
        if linear and ("target" not in a or not {"hidden", "classifier"} <= set(a)):
            raise at("args", message="a linear form's 'args' must place hidden, classifier and target",
                     fix="write e.g. 'args: [hidden, classifier, target, bias]'")
        kw["args"] = tuple(a)
    if "layout" in d:
        if d["layout"] not in LAYOUTS:
            raise at("layout", message=f"unknown layout {d['layout']!r}{did_you_mean(d['layout'], LAYOUTS)}",
                     fix="flat: (P, C) logits and (P,) labels; sequence: (N, T, C) and (N, T)")
        kw["layout"] = d["layout"]
    if "options" in d:
        o = d["options"]
        if not isinstance(o, dict):
            raise at("options", message="'options' must map our option names to the API's keywords",
                     fix="write e.g. 'options: {z_loss: lse_square_scale}'")
        for k, v in o.items():
            if k not in OPTIONS:
                raise at("options", k, message=f"unknown option {k!r}{did_you_mean(k, OPTIONS)}",
                         fix=f"use {', '.join(OPTIONS)}")
            if v is not None and (not isinstance(v, str) or not v.isidentifier()):
                raise at("options", k, message=f"option {k!r} must map to a keyword name (got {v!r})",
                         fix=f"write e.g. '{k}: {k}', or null for the same name")
        kw["options"] = {k: (v if v is not None else k) for k, v in o.items()}
    if "returns" in d:
        r = d["returns"]
        if r in (None, "loss"):
            kw["returns"] = {"loss": None}
        elif isinstance(r, dict):
            for k, v in r.items():
                if k not in ("loss", "z_loss", "lse"):
                    raise at("returns", k, message=f"unknown output {k!r}{did_you_mean(k, ['loss', 'z_loss', 'lse'])}",
                             fix="use loss, z_loss, lse")
                if not (v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 0)
                        or (isinstance(v, str) and v.isidentifier())):
                    raise at("returns", k, message=f"output {k!r} must be a tuple index, an attribute name or null "
                             f"(got {v!r})", fix=f"write e.g. '{k}: 0' or '{k}: {k}'")
            if "loss" not in r:
                raise at("returns", message="'returns' must say where the loss is",
                         fix="add 'loss: 0' (tuple index), 'loss: attr' or write 'returns: loss' for a tensor")
            kw["returns"] = dict(r)
        else:
            raise at("returns", message="'returns' must be 'loss' or a mapping output -> index/attribute",
                     fix="write e.g. 'returns: {loss: 0, z_loss: 1}'")
    if "fixed" in d:
        fx = d["fixed"]
        if not isinstance(fx, dict) or not all(isinstance(k, str) and k.isidentifier() for k in fx):
            raise at("fixed", message="'fixed' must map keyword names to constants",
                     fix="write e.g. 'fixed: {impl: torch}'")
        kw["fixed"] = dict(fx)
    try:
        return CallForm(**kw)
    except ValueError as exc:
        raise err("form", str(exc), "see docs/gating.md (LLM cross-entropy kernels)") from None


def _str_list(value, key, err) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise err(key, f"'{key}' must be a list of names", f"write e.g. '{key}: [a, b]'")
    return list(value)


def _llm_adapter(base: Adapter, cfg: dict, path) -> Adapter:
    """The imported callable wrapped in an LlmTorchAdapter that calls it through the form."""
    from conformance.adapters.llm import LlmTorchAdapter

    fn = getattr(base, "fn", None)
    if fn is None or getattr(base, "framework", None) != "torch":
        raise AdapterConfigError(str(path), cfg["import_line"], f"'form' needs a torch function to call, and "
                                 f"{cfg['import']} resolved to {type(base).__name__}",
                                 "import the bare function, e.g. 'import: liger_kernel.transformers.functional:"
                                 "liger_cross_entropy'")
    return LlmTorchAdapter(fn, cfg["name"], cfg["form"], device=cfg.get("device", "cpu"))


def adapter_from_config(path: str | Path, resolve: Callable[[str], Adapter]) -> Adapter:
    """The adapter a config file describes (its capabilities adjusted as declared); ``import:``
    is resolved with ``resolve`` (conformance.adapters.resolve, which calls this for a config
    file: passed in, so that neither module imports the other)."""
    cfg = load_config(path)
    folder = str(Path(cfg["file"]).parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    try:
        base = resolve(cfg["import"])
    except AdapterError as exc:
        raise AdapterConfigError(str(path), cfg["import_line"], f"import: {exc}") from None
    if "form" in cfg:
        base = _llm_adapter(base, cfg, path)
    a = copy.copy(base)
    a.name = cfg["name"]
    if "device" in cfg:
        a.device = cfg["device"]
        if cfg["device"].startswith("cuda"):
            # as TorchFunctionAdapter's constructor does: an out-of-range class index trips a
            # device-side assert that poisons the CUDA context, so error checks run in a child process
            a.isolate_kinds = tuple(sorted(set(a.isolate_kinds) | {"error"}))
    caps = a.capabilities
    changes: dict[str, Any] = {}
    if "unsupported" in cfg:
        changes["features"] = frozenset(caps.features) - frozenset(cfg["unsupported"])
    if "dtypes" in cfg:
        changes["dtypes"] = frozenset(cfg["dtypes"])
    if "ranks" in cfg:
        changes["ranks"] = frozenset(cfg["ranks"])
    if "variants" in cfg:
        changes["variants"] = frozenset(cfg["variants"])
    if "raises_on_invalid" in cfg:
        changes["raises_on_invalid"] = cfg["raises_on_invalid"]
    if "max_classes" in cfg:
        changes["max_classes"] = cfg["max_classes"]
    a.capabilities = replace(caps, **changes)
    if "world_size" in cfg:
        # declared by the class (VocabParallelAdapter's property); hasattr(a, ...) lets mypy see it
        if not hasattr(type(a), "world_size") or not hasattr(a, "world_size"):
            raise AdapterConfigError(str(path), cfg["world_size_line"], f"'world_size' is for distributed adapters, "
                                     f"and {cfg['import']} is not one", "remove the key, or import a "
                                     "conformance.adapters.vocab_parallel adapter")
        a.world_size = cfg["world_size"]
    a.config_file = cfg["file"]
    a.known_files = (cfg["known"],) if "known" in cfg else ()
    return a
