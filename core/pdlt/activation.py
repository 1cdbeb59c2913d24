"""The activation-function interface.

An activation implements ``__call__`` and, where it can, ``derivative(z, order)``; everything else
(Gaussian expectations, criticality) is supplied by the engine, which uses closed forms when a
plugin provides them and quadrature otherwise (the scipy.stats ``rv_continuous`` pattern).

Activations are frozen attrs value objects: hashable, picklable, compared by parameters, and
validated at construction.
"""

from __future__ import annotations

import math
from typing import ClassVar

import attrs
import numpy as np

from .errors import ParameterError

__all__ = ["Activation", "MAX_DERIVATIVE_ORDER"]

#: The engine asks activations for derivatives up to this order (σ'''' enters the NLO
#: kernel G1 and the NLO NTK H1 through ⟨∂⁴(σσ)⟩ in derivative form).
MAX_DERIVATIVE_ORDER = 4


@attrs.frozen(kw_only=True)
class Activation:
    """Base class of activation functions σ.

    Subclasses set the class attribute ``name`` and implement :meth:`__call__` and
    :meth:`_derivative`.  Metadata used by the Gaussian engine and by criticality analysis:

    * :attr:`max_derivative` — highest order for which σ^(order) is an ordinary function
      (possibly discontinuous).  Higher orders are distributions (δ, δ'); the engine then
      integrates by parts (Hermite insertions, theory/init.md §0) instead of differentiating.
    * :attr:`kinks` — points where σ or one of its derivatives up to :attr:`max_derivative`
      is not smooth; the quadrature splits its integration ranges there.
    * :meth:`taylor_coefficients` — σ^(p)(0), p = 0, 1, …, when σ is smooth at 0.
    * :attr:`scale_invariant_slopes` — (a₊, a₋) when σ(z) = a₊ z Θ(z) + a₋ z Θ(−z).
    """

    name: ClassVar[str] = ""
    #: Highest derivative order that is an ordinary function.
    max_derivative: ClassVar[int] = MAX_DERIVATIVE_ORDER

    # ----------------------------------------------------------------- evaluation
    def __call__(self, z):
        raise NotImplementedError(f"{type(self).__name__} must implement __call__")

    def derivative(self, z, order: int = 1):
        """σ^(order)(z) for ``0 <= order <= max_derivative`` (order 0 is σ itself).

        Raises
        ------
        ParameterError
            ``order`` is negative, not an integer, or above :attr:`max_derivative` (a
            distributional derivative: use the Gaussian engine, which integrates by parts).
        """
        if not isinstance(order, (int, np.integer)) or order < 0:
            raise ParameterError(
                f"The 'order' parameter of {type(self).__name__}.derivative must be a non-negative integer. Got {order!r} instead."
            )
        if order > self.max_derivative:
            raise ParameterError(
                f"The 'order' parameter of {type(self).__name__}.derivative must be <= {self.max_derivative} "
                f"(higher derivatives of {self.name!r} are distributions). Got {order!r} instead."
            )
        z = np.asarray(z, dtype=float)
        if order == 0:
            return np.asarray(self(z), dtype=float)
        return np.asarray(self._derivative(z, int(order)), dtype=float)

    def _derivative(self, z: np.ndarray, order: int) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} must implement _derivative")

    # ----------------------------------------------------------------- metadata
    @property
    def kinks(self) -> tuple[float, ...]:
        """Points where σ or a derivative up to :attr:`max_derivative` is non-smooth."""
        return ()

    @property
    def is_smooth(self) -> bool:
        """True when σ has no kinks (and ordinary derivatives up to MAX_DERIVATIVE_ORDER)."""
        return not self.kinks and self.max_derivative >= MAX_DERIVATIVE_ORDER

    @property
    def scale_invariant_slopes(self) -> tuple[float, float] | None:
        """(a₊, a₋) for σ(z) = a₊ z Θ(z) + a₋ z Θ(−z), else None."""
        return None

    def taylor_coefficients(self, count: int = 6) -> np.ndarray | None:
        """σ^(p)(0) for p = 0..count−1 (not divided by p!), or None if σ is not smooth at 0.

        The default uses the derivatives up to :attr:`max_derivative` and, beyond, a
        Cauchy-integral estimate that subclasses override with exact values.
        """
        if 0.0 in self.kinks:
            return None
        out = np.empty(count)
        for p in range(count):
            if p <= self.max_derivative:
                out[p] = float(self.derivative(np.array(0.0), p))
            else:
                out[p] = _complex_step_taylor(self, p)
        return out

    def describe(self) -> str:
        fields = ", ".join(f"{a.name}={getattr(self, a.name)!r}" for a in attrs.fields(type(self)))
        return f"{self.name}({fields})"


def _complex_step_taylor(act: Activation, p: int, radius: float = 0.5, m: int = 64) -> float:
    """σ^(p)(0) by the trapezoidal rule on a circle (Cauchy's formula); needs σ analytic there."""
    t = 2 * np.pi * np.arange(m) / m
    w = radius * np.exp(1j * t)
    try:
        vals = act(w)
    except Exception:  # activation not defined for complex arguments
        return math.nan
    return float(np.real(np.mean(vals * np.exp(-1j * p * t))) * math.factorial(p) / radius**p)
