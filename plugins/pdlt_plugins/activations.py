"""Built-in activation functions σ and their exact derivatives (book §5 classes).

Each activation is a frozen attrs value object implementing σ, its derivatives in closed form up
to the order the Gaussian engine needs (``MAX_DERIVATIVE_ORDER`` for smooth σ, the step function
for the ReLU family), and the metadata criticality analysis uses: kinks, scale-invariant slopes
(a₊, a₋) and exact Taylor coefficients σ^(p)(0) for σ smooth at 0 (theory/init.md §4).

Numerically, every function is evaluated without overflow for |z| up to ~1e3 (σ itself for the
exponential and monomial excepted): logistic quantities go through ``scipy.special.expit`` and
``np.logaddexp``, and the derivatives of tanh and of the logistic function are written as
sech²(z) or s(1 − s) — computed without cancellation — times a polynomial in tanh z or s.
"""

from __future__ import annotations

import math
import numbers
from fractions import Fraction
from functools import lru_cache

import attrs
import numpy as np
from scipy import special

from pdlt.activation import Activation
from pdlt.errors import check_parameter
from pdlt.hookspecs import hookimpl

__all__ = [
    "Linear",
    "ReLU",
    "LeakyReLU",
    "ScaleInvariant",
    "Tanh",
    "Sin",
    "Erf",
    "Sigmoid",
    "Softplus",
    "Swish",
    "GELU",
    "Perceptron",
    "Exponential",
    "Monomial",
]

_SQRT_2PI = math.sqrt(2.0 * math.pi)
_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)


# --------------------------------------------------------------------------- validation helpers
def _check_real(value, name: str, owner: str) -> None:
    check_parameter(
        isinstance(value, numbers.Real) and not isinstance(value, bool), name, owner, "a real number", value
    )
    check_parameter(math.isfinite(value), name, owner, "finite", value)


def _check_count(count, owner: str) -> int:
    ok = isinstance(count, (int, np.integer)) and not isinstance(count, bool) and count >= 0
    check_parameter(ok, "count", f"{owner}.taylor_coefficients", "a non-negative integer", count)
    return int(count)


# --------------------------------------------------------------------------- polynomial chain rule
# For u(z) with u' = c(u) (tanh: c = 1 − u², logistic: c = u − u²), every derivative of u is a
# polynomial in u: P_0 = u, P_{k+1} = P_k'(u) c(u).  Exact rational coefficients give exact Taylor
# coefficients; float copies evaluate σ^(k) = c(u) P_{k−1}'(u) with c computed accurately.
def _poly_mul(a: tuple[Fraction, ...], b: tuple[Fraction, ...]) -> tuple[Fraction, ...]:
    out = [Fraction(0)] * (len(a) + len(b) - 1)
    for i, ai in enumerate(a):
        for j, bj in enumerate(b):
            out[i + j] += ai * bj
    return tuple(out)


def _poly_diff(a: tuple[Fraction, ...]) -> tuple[Fraction, ...]:
    return tuple(i * a[i] for i in range(1, len(a))) or (Fraction(0),)


def _poly_eval(a: tuple[Fraction, ...], u: Fraction) -> Fraction:
    out = Fraction(0)
    for coef in reversed(a):
        out = out * u + coef
    return out


@lru_cache(maxsize=None)
def _chain_polynomial(chain: tuple[int, ...], k: int) -> tuple[Fraction, ...]:
    """P_k with P_0(u) = u and P_{k+1} = P_k'(u) c(u), c given by ``chain`` (ascending coefficients)."""
    if k == 0:
        return (Fraction(0), Fraction(1))
    return _poly_mul(_poly_diff(_chain_polynomial(chain, k - 1)), tuple(Fraction(c) for c in chain))


@lru_cache(maxsize=None)
def _derivative_factor(chain: tuple[int, ...], k: int) -> np.ndarray:
    """Float coefficients of P_{k−1}', so that u^(k) = c(u) P_{k−1}'(u) for k >= 1."""
    coefs = np.array([float(c) for c in _poly_diff(_chain_polynomial(chain, k - 1))])
    coefs.setflags(write=False)
    return coefs


_TANH_CHAIN = (1, 0, -1)  # tanh' = 1 − tanh²
_LOGISTIC_CHAIN = (0, 1, -1)  # s' = s − s²


def _sech2(z: np.ndarray) -> np.ndarray:
    # 1 − tanh² loses all digits for |z| ≳ 19; the exponential form neither cancels nor overflows.
    e = np.exp(-2.0 * np.abs(z))
    return 4.0 * e / (1.0 + e) ** 2


def _tanh_derivative(z: np.ndarray, k: int) -> np.ndarray:
    if k == 0:
        return np.tanh(z)
    return _sech2(z) * np.polynomial.polynomial.polyval(np.tanh(z), _derivative_factor(_TANH_CHAIN, k))


@lru_cache(maxsize=None)
def _logistic_factor_in_tanh(k: int) -> np.ndarray:
    """Coefficients of R_k(t) = P_{k−1}'(s) with s = (1 + t)/2, t = tanh(z/2)."""
    q = _poly_diff(_chain_polynomial(_LOGISTIC_CHAIN, k - 1))
    half_one_plus_t = (Fraction(1, 2), Fraction(1, 2))
    out: tuple[Fraction, ...] = (Fraction(0),)
    power: tuple[Fraction, ...] = (Fraction(1),)
    for coef in q:
        term = tuple(coef * c for c in power)
        out = tuple(a + b for a, b in zip(out + (Fraction(0),) * (len(term) - len(out)), term))
        power = _poly_mul(power, half_one_plus_t)
    coefs = np.array([float(c) for c in out])
    coefs.setflags(write=False)
    return coefs


def _logistic_derivative(z: np.ndarray, k: int) -> np.ndarray:
    if k == 0:
        return special.expit(z)
    # s(1 − s) as expit(z) expit(−z) does not cancel in the tails, and the polynomial factor is
    # written in t = tanh(z/2) = 2s − 1 so that its zero at z = 0 (even k) is not lost to 1 − 2s.
    t = np.tanh(0.5 * z)
    return special.expit(z) * special.expit(-z) * np.polynomial.polynomial.polyval(t, _logistic_factor_in_tanh(k))


@lru_cache(maxsize=None)
def _logistic_taylor(count: int) -> tuple[float, ...]:
    half = Fraction(1, 2)
    return tuple(float(_poly_eval(_chain_polynomial(_LOGISTIC_CHAIN, p), half)) for p in range(count))


@lru_cache(maxsize=None)
def _tanh_taylor(count: int) -> tuple[float, ...]:
    return tuple(float(_chain_polynomial(_TANH_CHAIN, p)[0]) for p in range(count))


# --------------------------------------------------------------------------- Hermite polynomials
def _hermite_e(n: int, z: np.ndarray) -> list[np.ndarray]:
    """Probabilists' He_0..He_n at z (He_{m+1} = z He_m − m He_{m−1}); φ^(m) = (−1)^m He_m φ."""
    out = [np.ones_like(z), z]
    for m in range(1, n):
        out.append(z * out[m] - m * out[m - 1])
    return out[: n + 1]


def _hermite_h(n: int, z: np.ndarray) -> list[np.ndarray]:
    """Physicists' H_0..H_n at z (H_{m+1} = 2z H_m − 2m H_{m−1}); (e^{−z²})^(m) = (−1)^m H_m e^{−z²}."""
    out = [np.ones_like(z), 2.0 * z]
    for m in range(1, n):
        out.append(2.0 * z * out[m] - 2 * m * out[m - 1])
    return out[: n + 1]


def _double_factorial(n: int) -> int:
    return math.prod(range(n, 0, -2)) if n > 0 else 1


def _hermite_e_at_zero(n: int) -> int:
    return 0 if n % 2 else (-1) ** (n // 2) * _double_factorial(n - 1)


def _hermite_h_at_zero(n: int) -> int:
    return 0 if n % 2 else (-1) ** (n // 2) * math.factorial(n) // math.factorial(n // 2)


def _as_float(z) -> np.ndarray:
    return np.asarray(z, dtype=float)


# --------------------------------------------------------------------------- scale-invariant family
@attrs.frozen(kw_only=True)
class _PiecewiseLinear(Activation):
    """Shared implementation of σ(z) = a₊ z Θ(z) + a₋ z Θ(−z) with a kink at 0.

    σ' is the step a₊ Θ(z) + a₋ Θ(−z), valued (a₊ + a₋)/2 at 0; σ'' is a δ-function, so
    ``max_derivative = 1`` and the engine integrates higher orders by parts.  The kink is declared
    even when a₊ = a₋ (σ linear), which only makes the quadrature split a smooth integrand.
    """

    max_derivative = 1

    @property
    def kinks(self) -> tuple[float, ...]:
        return (0.0,)

    def __call__(self, z):
        z = _as_float(z)
        a_plus, a_minus = self.scale_invariant_slopes
        # Terms with a zero slope are skipped so that 0 · (±inf) never produces nan.
        out = np.zeros_like(z)
        if a_plus:
            out = out + a_plus * np.maximum(z, 0.0)
        if a_minus:
            out = out + a_minus * np.minimum(z, 0.0)
        return out

    def _derivative(self, z, order):
        a_plus, a_minus = self.scale_invariant_slopes
        return a_plus * np.heaviside(z, 0.5) + a_minus * np.heaviside(-z, 0.5)


@attrs.frozen(kw_only=True)
class ReLU(_PiecewiseLinear):
    """Rectified linear unit σ(z) = max(z, 0).

    Notes
    -----
    Scale-invariant with (a₊, a₋) = (1, 0); critical at C_b = 0, C_W = 2 (book §5.2).
    σ'(0) is taken as 1/2.
    """

    name = "relu"

    @property
    def scale_invariant_slopes(self) -> tuple[float, float]:
        return (1.0, 0.0)


@attrs.frozen(kw_only=True)
class LeakyReLU(_PiecewiseLinear):
    """Leaky ReLU σ(z) = z for z ≥ 0, ``slope`` · z for z < 0.

    Parameters
    ----------
    slope : float, default 0.01
        Slope a₋ ≥ 0 of the negative branch.

    Notes
    -----
    Scale-invariant with (a₊, a₋) = (1, slope); critical C_W = 2/(1 + slope²).
    """

    name = "leaky_relu"

    slope: float = 0.01

    def __attrs_post_init__(self) -> None:
        _check_real(self.slope, "slope", type(self).__name__)
        check_parameter(self.slope >= 0, "slope", type(self).__name__, ">= 0", self.slope)

    @property
    def scale_invariant_slopes(self) -> tuple[float, float]:
        return (1.0, float(self.slope))


@attrs.frozen(kw_only=True)
class ScaleInvariant(_PiecewiseLinear):
    """General scale-invariant activation σ(z) = a₊ z Θ(z) + a₋ z Θ(−z).

    Parameters
    ----------
    a_plus, a_minus : float
        Slopes of the positive and negative branches; finite, not both zero.

    Notes
    -----
    σ(cz) = c σ(z) for c > 0.  With A_2 = (a₊² + a₋²)/2 the critical point is C_b = 0,
    C_W = 1/A_2 (theory/init.md §4).
    """

    name = "scale_invariant"

    a_plus: float
    a_minus: float

    def __attrs_post_init__(self) -> None:
        owner = type(self).__name__
        _check_real(self.a_plus, "a_plus", owner)
        _check_real(self.a_minus, "a_minus", owner)
        check_parameter(
            self.a_plus != 0 or self.a_minus != 0,
            "a_plus",
            owner,
            "nonzero when 'a_minus' is 0",
            self.a_plus,
            hint="σ ≡ 0 is not an activation.",
        )

    @property
    def scale_invariant_slopes(self) -> tuple[float, float]:
        return (float(self.a_plus), float(self.a_minus))


# --------------------------------------------------------------------------- smooth activations
@attrs.frozen(kw_only=True)
class Linear(Activation):
    """Identity σ(z) = z: deep linear networks (book ch. 3).

    Notes
    -----
    Smooth, and also scale-invariant with (a₊, a₋) = (1, 1).
    """

    name = "linear"

    def __call__(self, z):
        return np.array(z, dtype=float)

    def _derivative(self, z, order):
        return np.full_like(z, 1.0 if order == 1 else 0.0)

    @property
    def scale_invariant_slopes(self) -> tuple[float, float]:
        return (1.0, 1.0)

    def taylor_coefficients(self, count: int = 6) -> np.ndarray:
        out = np.zeros(_check_count(count, type(self).__name__))
        out[1:2] = 1.0
        return out


@attrs.frozen(kw_only=True)
class Tanh(Activation):
    """Hyperbolic tangent σ(z) = tanh z.

    Notes
    -----
    σ^(k) = sech²z · P_{k−1}'(tanh z) with P_0(t) = t, P_{k+1} = P_k'(t)(1 − t²); e.g.
    σ'' = −2 t sech²z, σ''' = (6t² − 2) sech²z.  Taylor coefficients at 0:
    0, 1, 0, −2, 0, 16, 0, −272, …  K* = 0 universality class (σ_1 = 1, σ_3 = −2).
    """

    name = "tanh"

    def __call__(self, z):
        return np.tanh(_as_float(z))

    def _derivative(self, z, order):
        return _tanh_derivative(z, order)

    def taylor_coefficients(self, count: int = 6) -> np.ndarray:
        return np.array(_tanh_taylor(_check_count(count, type(self).__name__)), dtype=float)


@attrs.frozen(kw_only=True)
class Sin(Activation):
    """Sine σ(z) = sin z.

    Notes
    -----
    σ^(k)(z) = sin(z + kπ/2); Taylor coefficients 0, 1, 0, −1, 0, 1, …  K* = 0 class.
    """

    name = "sin"

    def __call__(self, z):
        return np.sin(_as_float(z))

    def _derivative(self, z, order):
        # Exact quarter-turn identities instead of sin(z + kπ/2), whose rounded shift adds error.
        return (np.sin(z), np.cos(z), -np.sin(z), -np.cos(z))[order % 4]

    def taylor_coefficients(self, count: int = 6) -> np.ndarray:
        return np.array([(0.0, 1.0, 0.0, -1.0)[p % 4] for p in range(_check_count(count, type(self).__name__))])


@attrs.frozen(kw_only=True)
class Erf(Activation):
    """Error function σ(z) = erf z = (2/√π) ∫_0^z e^{−t²} dt.

    Notes
    -----
    σ^(k)(z) = (2/√π) (−1)^{k−1} H_{k−1}(z) e^{−z²} (physicists' Hermite H_n), so
    σ^(k)(0) = (2/√π)(−1)^{k−1} H_{k−1}(0) with H_{2m}(0) = (−1)^m (2m)!/m!.
    """

    name = "erf"

    def __call__(self, z):
        return special.erf(_as_float(z))

    def _derivative(self, z, order):
        h = _hermite_h(order - 1, z)[order - 1]
        return (-1) ** (order - 1) * _TWO_OVER_SQRT_PI * h * np.exp(-z * z)

    def taylor_coefficients(self, count: int = 6) -> np.ndarray:
        count = _check_count(count, type(self).__name__)
        return np.array(
            [0.0] + [(-1) ** (p - 1) * _TWO_OVER_SQRT_PI * _hermite_h_at_zero(p - 1) for p in range(1, count)]
        )[:count]


@attrs.frozen(kw_only=True)
class Sigmoid(Activation):
    """Logistic sigmoid σ(z) = 1/(1 + e^{−z}).

    Notes
    -----
    With s = σ(z): σ' = s(1 − s) and σ^(k) = s(1 − s) P_{k−1}'(s), P_0(s) = s,
    P_{k+1} = P_k'(s) s(1 − s); e.g. σ'' = s(1 − s)(1 − 2s).  σ(0) = 1/2 ≠ 0: no criticality.
    """

    name = "sigmoid"

    def __call__(self, z):
        return special.expit(_as_float(z))

    def _derivative(self, z, order):
        return _logistic_derivative(z, order)

    def taylor_coefficients(self, count: int = 6) -> np.ndarray:
        return np.array(_logistic_taylor(_check_count(count, type(self).__name__)), dtype=float)


@attrs.frozen(kw_only=True)
class Softplus(Activation):
    """Softplus σ(z) = log(1 + e^z).

    Notes
    -----
    σ' is the logistic sigmoid, so σ^(k) = sigmoid^(k−1); σ(0) = log 2.
    """

    name = "softplus"

    def __call__(self, z):
        return np.logaddexp(0.0, _as_float(z))

    def _derivative(self, z, order):
        return _logistic_derivative(z, order - 1)

    def taylor_coefficients(self, count: int = 6) -> np.ndarray:
        count = _check_count(count, type(self).__name__)
        return np.array((math.log(2.0),) + _logistic_taylor(max(count - 1, 0)), dtype=float)[:count]


@attrs.frozen(kw_only=True)
class Swish(Activation):
    """Swish (SiLU) σ(z) = z · sigmoid(z).

    Notes
    -----
    σ^(k) = z s^(k) + k s^(k−1) with s the logistic sigmoid, so σ^(k)(0) = k s^(k−1)(0).
    Half-stable class: critical at K* ≈ 14.32, C_W ≈ 1.988, C_b ≈ 0.555 (theory/init.md §4).
    """

    name = "swish"

    def __call__(self, z):
        z = _as_float(z)
        return z * special.expit(z)

    def _derivative(self, z, order):
        return z * _logistic_derivative(z, order) + order * _logistic_derivative(z, order - 1)

    def taylor_coefficients(self, count: int = 6) -> np.ndarray:
        count = _check_count(count, type(self).__name__)
        s = _logistic_taylor(count)
        return np.array([0.0] + [p * s[p - 1] for p in range(1, count)])[:count]


@attrs.frozen(kw_only=True)
class GELU(Activation):
    """Gaussian error linear unit σ(z) = z Φ(z), Φ the standard normal CDF.

    Notes
    -----
    σ' = Φ + z φ and, for k ≥ 2, σ^(k) = (−1)^k [He_{k−2}(z) − He_k(z)] φ(z) (probabilists'
    Hermite He_n, φ the standard normal density); e.g. σ'' = (2 − z²) φ.
    Half-stable class: critical at K* ≈ 3.5616, C_W ≈ 1.98306, C_b ≈ 0.17292.
    """

    name = "gelu"

    def __call__(self, z):
        z = _as_float(z)
        return z * special.ndtr(z)

    def _derivative(self, z, order):
        phi = np.exp(-0.5 * z * z) / _SQRT_2PI
        if order == 1:
            return special.ndtr(z) + z * phi
        he = _hermite_e(order, z)
        return (-1) ** order * (he[order - 2] - he[order]) * phi

    def taylor_coefficients(self, count: int = 6) -> np.ndarray:
        count = _check_count(count, type(self).__name__)
        out = [0.0, 0.5] + [
            (-1) ** p * (_hermite_e_at_zero(p - 2) - _hermite_e_at_zero(p)) / _SQRT_2PI for p in range(2, count)
        ]
        return np.array(out[:count], dtype=float)


@attrs.frozen(kw_only=True)
class Exponential(Activation):
    """Exponential σ(z) = e^z; every derivative is e^z and every Taylor coefficient is 1."""

    name = "exponential"

    def __call__(self, z):
        return np.exp(_as_float(z))

    def _derivative(self, z, order):
        return np.exp(z)

    def taylor_coefficients(self, count: int = 6) -> np.ndarray:
        return np.ones(_check_count(count, type(self).__name__))


@attrs.frozen(kw_only=True)
class Monomial(Activation):
    """Monomial σ(z) = z^power.

    Parameters
    ----------
    power : int
        Integer exponent p >= 1.

    Notes
    -----
    σ^(k) = p!/(p − k)! z^{p−k} for k ≤ p and 0 beyond; σ^(p)(0) = p!, all other Taylor
    coefficients vanish.  For p ≥ 2 there is no criticality (χ_∥/χ_⊥ = (2p − 1)/p); p = 1 is the
    linear activation, reported with scale-invariant slopes (1, 1).
    """

    name = "monomial"

    power: int

    def __attrs_post_init__(self) -> None:
        owner = type(self).__name__
        ok = isinstance(self.power, numbers.Integral) and not isinstance(self.power, bool)
        check_parameter(ok, "power", owner, "an integer", self.power)
        check_parameter(self.power >= 1, "power", owner, ">= 1", self.power)

    def __call__(self, z):
        return _as_float(z) ** int(self.power)

    def _derivative(self, z, order):
        p = int(self.power)
        if order > p:
            return np.zeros_like(z)
        return (math.factorial(p) // math.factorial(p - order)) * z ** (p - order)

    @property
    def scale_invariant_slopes(self) -> tuple[float, float] | None:
        return (1.0, 1.0) if self.power == 1 else None

    def taylor_coefficients(self, count: int = 6) -> np.ndarray:
        out = np.zeros(_check_count(count, type(self).__name__))
        if self.power < out.size:
            out[self.power] = math.factorial(self.power)
        return out


# --------------------------------------------------------------------------- kinked, no derivative
@attrs.frozen(kw_only=True)
class Perceptron(Activation):
    """Perceptron (Heaviside step) σ(z) = Θ(z), with σ(0) = 1/2.

    Notes
    -----
    σ' = δ(z) is a distribution, so ``max_derivative = 0``; the engine integrates by parts.
    """

    name = "perceptron"
    max_derivative = 0

    @property
    def kinks(self) -> tuple[float, ...]:
        return (0.0,)

    def __call__(self, z):
        return np.heaviside(_as_float(z), 0.5)


_BUILTINS = (
    Linear,
    ReLU,
    LeakyReLU,
    ScaleInvariant,
    Tanh,
    Sin,
    Erf,
    Sigmoid,
    Softplus,
    Swish,
    GELU,
    Perceptron,
    Exponential,
    Monomial,
)


@hookimpl
def pdlt_register_activations():
    return list(_BUILTINS)
