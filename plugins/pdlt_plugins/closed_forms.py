"""Closed-form Gaussian expectations (the ``pdlt_gaussian_expectation`` hook).

* Scale-invariant family σ = a₊ z Θ(z) + a₋ z Θ(−z) (ReLU, leaky ReLU, …), identified by the
  activation's ``scale_invariant_slopes`` metadata: every product of σ and σ' over one variable,
  and the arc-cosine kernels ⟨σσ⟩, ⟨σ'σ'⟩, ⟨σσ'⟩ over two (book §5.5; Cho & Saul 2009).
* Linear σ = a z (a₊ = a₋): Wick's theorem for up to four slots.
* erf: ⟨σσ⟩ and ⟨σ'σ'⟩ over one or two variables (Williams 1997).

Anything else returns ``None`` so that the engine's quadrature takes over.
"""

from __future__ import annotations

import math

import numpy as np

from pdlt.hookspecs import hookimpl

_SQRT_2PI = math.sqrt(2.0 * math.pi)


def _rho(K):
    s1 = np.sqrt(np.maximum(K[:, 0, 0], 0.0))
    s2 = np.sqrt(np.maximum(K[:, 1, 1], 0.0))
    denom = s1 * s2
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = np.where(denom > 0, K[:, 0, 1] / np.where(denom > 0, denom, 1.0), 0.0)
    return s1, s2, np.clip(rho, -1.0, 1.0)


def _half_moment(q: int, K):
    """E[z^q ; z > 0] for z ~ N(0, K)."""
    return K ** (q / 2) * 2 ** (q / 2) * math.gamma((q + 1) / 2) / (2 * math.sqrt(math.pi))


def _scale_invariant(slopes, orders, K):
    ap, am = slopes
    k = len(orders)
    if any(d > 1 for d in orders):
        return None  # δ-function derivatives: the engine integrates by parts
    if k == 1:
        # all slots on one variable: z^q times a₊^k Θ(z) + a₋^k Θ(−z)
        q = sum(1 for d in orders if d == 0)
        var = K[:, 0, 0]
        return (ap**k + (-1) ** q * am**k) * _half_moment(q, var)
    if k != 2:
        return None
    s1, s2, rho = _rho(K)
    # ψ from atan2 (not arccos): accurate for nearly coinciding inputs; exactly 0 when they coincide
    det = np.maximum(K[:, 0, 0] * K[:, 1, 1] - K[:, 0, 1] ** 2, 0.0)
    coincide = np.abs(K[:, 0, 0] + K[:, 1, 1] - 2 * K[:, 0, 1]) <= 1e-13 * np.maximum(np.maximum(K[:, 0, 0], K[:, 1, 1]), 1e-300)
    det = np.where(coincide, 0.0, det)
    psi = np.where(s1 * s2 > 0, np.arctan2(np.sqrt(det), K[:, 0, 1]), np.pi / 2)
    sin_psi = np.where(s1 * s2 > 0, np.sqrt(det) / np.where(s1 * s2 > 0, s1 * s2, 1.0), 1.0)
    if orders == (0, 0):
        # J(ρ) = √(K11K22)/2π (sin ψ + (π−ψ) cos ψ); J(−ρ) has ψ → π − ψ
        J_plus = s1 * s2 / (2 * np.pi) * (sin_psi + (np.pi - psi) * rho)
        J_minus = s1 * s2 / (2 * np.pi) * (sin_psi - psi * rho)
        return (ap**2 + am**2) * J_plus - 2 * ap * am * J_minus
    if orders == (1, 1):
        return (ap**2 + am**2) * (np.pi - psi) / (2 * np.pi) + 2 * ap * am * psi / (2 * np.pi)
    if orders in ((0, 1), (1, 0)):
        s = s1 if orders == (0, 1) else s2
        return (ap**2 - am**2) * s * (1 + rho) / (2 * _SQRT_2PI)
    return None


def _linear(a, orders, K):
    if any(d > 1 for d in orders):
        return np.zeros(K.shape[0])
    slots = [s for s, d in enumerate(orders) if d == 0]
    scale = a ** len(orders)
    if len(slots) % 2:
        return np.zeros(K.shape[0])
    if not slots:
        return np.full(K.shape[0], scale)
    if len(slots) == 2:
        a_, b_ = slots
        return scale * K[:, a_, b_]
    a_, b_, c_, d_ = slots
    return scale * (K[:, a_, b_] * K[:, c_, d_] + K[:, a_, c_] * K[:, b_, d_] + K[:, a_, d_] * K[:, b_, c_])


def _erf(orders, K):
    k = len(orders)
    if k == 1:
        if orders == (0,):
            return np.zeros(K.shape[0])
        if orders == (1,):
            return 2.0 / np.sqrt(np.pi * (1 + 2 * K[:, 0, 0]))
        return None
    if k != 2:
        return None
    k11, k22, k12 = K[:, 0, 0], K[:, 1, 1], K[:, 0, 1]
    if orders == (0, 0):
        return (2 / np.pi) * np.arcsin(np.clip(2 * k12 / np.sqrt((1 + 2 * k11) * (1 + 2 * k22)), -1.0, 1.0))
    if orders == (1, 1):
        return (4 / np.pi) / np.sqrt((1 + 2 * k11) * (1 + 2 * k22) - 4 * k12**2)
    return None


@hookimpl(trylast=True)
def pdlt_gaussian_expectation(activation, orders, K):
    K = np.asarray(K, dtype=float)
    slopes = activation.scale_invariant_slopes
    value = None
    if slopes is not None:
        ap, am = (float(s) for s in slopes)
        if ap == am:
            value = _linear(ap, tuple(orders), K)
        else:
            value = _scale_invariant((ap, am), tuple(orders), K)
    elif activation.name == "erf" and type(activation).__module__ == __name__.rsplit(".", 1)[0] + ".activations":
        value = _erf(tuple(orders), K)
    if value is None:
        return None
    value = np.asarray(value, dtype=float)
    return value, np.zeros_like(value)
