"""The architecture interface: hyperparameters of a network family and its layer-to-layer maps.

An architecture holds the widths n_0..n_L, the activation and the per-layer initialization
(C_b^(ℓ), C_W^(ℓ)) and learning-rate (λ_b^(ℓ), λ_W^(ℓ)) hyperparameters, ℓ = 1..L.  It supplies
:meth:`first_layer` and :meth:`next_layer`, which the flow driver (:mod:`pdlt.flow`) iterates
without knowing which architecture it is driving, and :meth:`sample_forward` which the ensemble
engine uses to build real finite-width networks.
"""

from __future__ import annotations

import numbers
from typing import Any, ClassVar, Sequence

import attrs
import numpy as np

from .activation import Activation
from .criticality import criticality
from .errors import NoCriticalityError, ParameterError

__all__ = ["Architecture", "per_layer", "positive_int"]


def per_layer(value: Any) -> tuple[float, ...] | float:
    """Converter: a scalar stays a float; a sequence becomes a tuple of floats."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return float(value)
    try:
        return tuple(float(v) for v in value)
    except TypeError:
        raise ParameterError(f"expected a number or a sequence of numbers per layer. Got {value!r} instead.") from None


def positive_int(owner: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ParameterError(f"The {name!r} parameter of {owner} must be a positive integer. Got {value!r} instead.")
    return int(value)


def _widths(value: Any) -> tuple[int, ...]:
    if isinstance(value, numbers.Integral):
        value = (value,)
    return tuple(value)


@attrs.frozen(kw_only=True)
class Architecture:
    """Base class of network architectures (the MLP of book §2 and its variants).

    Parameters
    ----------
    input_dim : int
        n_0, the input dimension.
    hidden_widths : sequence of int
        n_1..n_{L−1}; the depth is L = len(hidden_widths) + 1.
    output_dim : int
        n_L.
    activation : Activation
    c_b, c_w : float or sequence of L floats
        Bias variance C_b^(ℓ) and weight variance C_W^(ℓ) (weights have variance C_W/n_{ℓ−1}).
    lambda_b, lambda_w : float or sequence of L floats
        Learning-rate tensor: λ_b^(ℓ) for biases, λ_W^(ℓ)/n_{ℓ−1} for weights (book §7.2).
    """

    name: ClassVar[str] = ""

    input_dim: int = attrs.field()
    hidden_widths: tuple[int, ...] = attrs.field(converter=_widths)
    output_dim: int = attrs.field(default=1)
    activation: Activation = attrs.field()
    c_b: float | tuple[float, ...] = attrs.field(default=0.0, converter=per_layer)
    c_w: float | tuple[float, ...] = attrs.field(default=1.0, converter=per_layer)
    lambda_b: float | tuple[float, ...] = attrs.field(default=1.0, converter=per_layer)
    lambda_w: float | tuple[float, ...] = attrs.field(default=1.0, converter=per_layer)

    def __attrs_post_init__(self) -> None:
        owner = type(self).__name__
        positive_int(owner, "input_dim", self.input_dim)
        positive_int(owner, "output_dim", self.output_dim)
        for w in self.hidden_widths:
            positive_int(owner, "hidden_widths", w)
        if not isinstance(self.activation, Activation):
            raise ParameterError(
                f"The 'activation' parameter of {owner} must be an Activation instance "
                f"(e.g. pdlt.activation('tanh')). Got {self.activation!r} instead."
            )
        L = self.depth
        for pname, lo, strict in (("c_b", 0.0, False), ("c_w", 0.0, True), ("lambda_b", 0.0, False), ("lambda_w", 0.0, False)):
            raw = getattr(self, pname)
            if isinstance(raw, tuple) and len(raw) != L:
                raise ParameterError(
                    f"The {pname!r} parameter of {owner} must be a scalar or a sequence of L = {L} values "
                    f"(one per layer). Got {len(raw)} values instead."
                )
            arr = np.atleast_1d(np.asarray(raw, dtype=float))
            bad = ~np.isfinite(arr) | ((arr <= lo) if strict else (arr < lo))
            if bad.any():
                rel = "> 0" if strict else ">= 0"
                raise ParameterError(f"The {pname!r} parameter of {owner} must be finite and {rel}. Got {raw!r} instead.")

    # ----------------------------------------------------------------- shape
    @property
    def depth(self) -> int:
        """L, the number of layers (hidden layers + output layer)."""
        return len(self.hidden_widths) + 1

    @property
    def widths(self) -> tuple[int, ...]:
        """(n_0, n_1, …, n_L)."""
        return (int(self.input_dim), *map(int, self.hidden_widths), int(self.output_dim))

    def _layer_values(self, pname: str) -> np.ndarray:
        raw = getattr(self, pname)
        return np.full(self.depth, raw, dtype=float) if np.isscalar(raw) else np.asarray(raw, dtype=float)

    def hyperparameters(self, ell: int) -> dict[str, float]:
        """C_b, C_W, λ_b, λ_W of layer ``ell`` (book numbering 1..L)."""
        if not 1 <= ell <= self.depth:
            raise ParameterError(f"The 'ell' parameter must be in 1..{self.depth}. Got {ell!r} instead.")
        return {p: float(self._layer_values(p)[ell - 1]) for p in ("c_b", "c_w", "lambda_b", "lambda_w")}

    @property
    def C_b(self) -> np.ndarray:
        return self._layer_values("c_b")

    @property
    def C_W(self) -> np.ndarray:
        return self._layer_values("c_w")

    @property
    def lambda_B(self) -> np.ndarray:
        return self._layer_values("lambda_b")

    @property
    def lambda_W(self) -> np.ndarray:
        return self._layer_values("lambda_w")

    def evolve(self, **changes) -> "Architecture":
        """A copy with some parameters changed (validators re-run)."""
        return attrs.evolve(self, **changes)

    # ----------------------------------------------------------------- theory hooks
    def first_layer(self, X: np.ndarray, *, order: str = "full"):  # pragma: no cover - interface
        """Statistics of layer 1 for inputs X (shape (N, n_0))."""
        raise NotImplementedError

    def next_layer(self, stats, ell: int, *, order: str = "full", rule=None):  # pragma: no cover - interface
        """Statistics of layer ℓ+1 from those of layer ℓ (``ell`` = ℓ, book numbering).

        ``rule`` is the :class:`pdlt.gaussian.QuadratureRule` for the Gaussian engine (None: default)."""
        raise NotImplementedError

    def at_criticality(self) -> "Architecture":
        """A copy with the critical initialization (C_b, C_W) of its activation in every layer.

        Raises
        ------
        NoCriticalityError
            The activation admits no critical initialization (e.g. sigmoid, softplus, z²).

        Notes
        -----
        Book §5.2–§5.3; the classification is :func:`pdlt.criticality.criticality`.
        Learning rates are left unchanged (see :func:`pdlt.criticality.learning_rate_schedule`).
        """
        report = criticality(self.activation)
        if not report.is_critical:
            raise NoCriticalityError(
                f"{type(self).__name__} with activation {self.activation.describe()!r} has no critical "
                f"initialization: {report.reason}. Choose an activation of a critical universality class "
                "(scale-invariant, K*=0 or half-stable), e.g. 'relu', 'tanh' or 'gelu'."
            )
        return self.evolve(c_b=report.c_b, c_w=report.c_w)

    # ----------------------------------------------------------------- real networks
    def sample_forward(self, X: np.ndarray, size: int, rng: np.random.Generator, *, ntk: bool = True):  # pragma: no cover
        raise NotImplementedError
