"""Misbehaving adapters, one fault each, for the containment tests (test_containment.py,
test_interrupt.py). Each wraps the NumPy reference (or torch for the grad-mode fault), so
that its verdicts would be right if it behaved: whatever goes wrong is the fault itself.
Named ``misbehaving:ClassName`` with this folder on PYTHONPATH."""
import ctypes
import os
import threading
import time

import numpy as np

from conformance.adapters.base import Result
from conformance.adapters.numpy_ref import NumpyAdapter


class AdapterMeltdown(BaseException):
    """A BaseException that is neither SystemExit nor KeyboardInterrupt nor GeneratorExit."""


class _Misbehaving(NumpyAdapter):
    framework = "numpy"

    def misbehave(self) -> None:
        raise NotImplementedError

    def call(self, case, *, gradient=False):
        self.misbehave()
        return super().call(case, gradient=gradient)


class Exit0(_Misbehaving):
    name = "exit0"

    def misbehave(self):
        os._exit(0)


class Exit3(_Misbehaving):
    name = "exit3"

    def misbehave(self):
        os._exit(3)


class Abort(_Misbehaving):
    name = "abort"

    def misbehave(self):
        os.abort()


class Segfault(_Misbehaving):
    name = "segfault"

    def misbehave(self):
        ctypes.string_at(0)


class RaisesSystemExit(_Misbehaving):
    name = "systemexit"

    def misbehave(self):
        raise SystemExit(0)


class RaisesKeyboardInterrupt(_Misbehaving):
    name = "keyboardinterrupt"

    def misbehave(self):
        raise KeyboardInterrupt


class RaisesGeneratorExit(_Misbehaving):
    name = "generatorexit"

    def misbehave(self):
        raise GeneratorExit


class RaisesCustomBaseException(_Misbehaving):
    name = "meltdown"

    def misbehave(self):
        raise AdapterMeltdown("core temperature exceeded")


class Sleeps(_Misbehaving):
    name = "sleeps"

    def misbehave(self):
        time.sleep(10**6)


class LeavesThread(_Misbehaving):
    name = "leaves-thread"

    def misbehave(self):
        threading.Thread(target=time.sleep, args=(3600,), name="lingering", daemon=False).start()


class SetsNumpyRaise(_Misbehaving):
    name = "seterr-raise"

    def misbehave(self):
        np.seterr(all="raise")


class Chdir(_Misbehaving):
    name = "chdir-root"

    def misbehave(self):
        os.chdir("/")


class Doubled(NumpyAdapter):
    """Returns twice the loss: a plain wrong answer (fails forward checks) that behaves otherwise."""

    name = "doubled"

    def call(self, case, *, gradient=False):
        r = super().call(case, gradient=gradient)
        with np.errstate(over="ignore"):  # twice a float16 loss near 65504 is inf: wrong, as meant
            return Result(r.value * 2, r.gradients, r.warnings)


class DisablesGrad(_Misbehaving):
    """torch.set_grad_enabled(False) on every call, never restored (in one process, every
    torch adapter after it loses its gradients)."""

    name = "grad-off"

    def misbehave(self):
        import torch

        torch.set_grad_enabled(False)


class AcceptsInvalid(NumpyAdapter):
    """Returns 0 where it should raise: fails the error contract, behaves otherwise."""

    name = "accepts-invalid"

    def call(self, case, *, gradient=False):
        try:
            return super().call(case, gradient=gradient)
        except Exception:  # noqa: BLE001 - the planted bug
            return Result(np.zeros((), dtype=np.asarray(case.x).dtype))
