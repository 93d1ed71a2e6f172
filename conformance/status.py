"""The statuses a check result can have, in one place: the engine's ``CheckResult.status``
(a :data:`Status`), the runner's rules that change it (known divergences, ``--strict``, the
baseline), the results file's schema check and summary, and the report all read them here.

A pipeline module of its own (no imports) so that the runner's results file can name the
statuses without importing the engine and its frameworks. Meanings: docs/results.md.
"""
from __future__ import annotations

from typing import Literal, get_args

Status = Literal["passed", "failed", "known", "variant", "permissive", "flaky", "not_supported", "error",
                 "skipped", "fixed"]
#: Every status, in the order summaries list them; "permissive" is a SHOULD clause the
#: implementation does not enforce (fails only under --strict), "flaky" the same input
#: answered differently twice.
STATUSES: tuple[Status, ...] = get_args(Status)
