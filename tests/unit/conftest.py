"""Shared test helpers for tests/unit: a single-network reference by complex-step and finite
differences, used to check the exact per-network jets of MLPs and residual MLPs
(:func:`pdlt.dntk_ensemble.output_differentials`) in test_dntk.py and test_residual_dntk.py."""

from __future__ import annotations

import itertools
import types

import numpy as np
import pytest


class ReferenceNetwork:
    """One (residual) tanh network as a function of its flat parameter vector θ (complex-safe).

    z^(ℓ+1) = ξ^(ℓ+1)(W σ(z^(ℓ)) + b) + γ^(ℓ+1) z^(ℓ); an MLP has γ = 0 and ξ = 1 (no ``gammas``/``xis``).
    """

    def __init__(self, net, params, s, X):
        self.W = net.widths
        self.L = len(self.W) - 1
        self.X = X
        self.g = np.asarray(getattr(net, "gammas", np.zeros(self.L)), dtype=float)
        self.xi = np.asarray(getattr(net, "xis", np.ones(self.L)), dtype=float)
        self.theta = np.concatenate(
            [np.concatenate([params.weights[l][s].ravel(), params.biases[l][s]]) for l in range(self.L)]
        )
        self.lam = np.concatenate(
            [
                np.concatenate(
                    [np.full(self.W[l + 1] * self.W[l], net.lambda_W[l] / self.W[l]), np.full(self.W[l + 1], net.lambda_B[l])]
                )
                for l in range(self.L)
            ]
        )

    def z(self, th):
        a, o, z = self.X.T, 0, None
        for l in range(self.L):
            n, m = self.W[l + 1], self.W[l]
            Wl = th[o : o + n * m].reshape(n, m)
            o += n * m
            bl = th[o : o + n]
            o += n
            zn = self.xi[l] * (Wl @ a + bl[:, None])
            if self.g[l] != 0.0:
                zn = zn + self.g[l] * z
            z = zn
            a = np.tanh(z)
        return z.ravel()  # flattened I = i·N + δ

    def dz(self, th, v, h=1e-30):
        """Dz[v] at θ, exact to round-off (complex step)."""
        return np.imag(self.z(th + 1j * h * v)) / h


def _jets(net, params, s, X):
    """(reference, J, V): the Jacobian J = ∂z_I/∂θ and the tangent vectors v_I = λ ∂z_I (rows)."""
    ref = ReferenceNetwork(net, params, s, X)
    J = np.stack([ref.dz(ref.theta, e) for e in np.eye(len(ref.theta))], axis=1)
    return ref, J, ref.lam * J


def _dntk(ref, V, t):
    """D²z_I[v_a, v_b] by central differences of the complex-step derivative: (I, a, b)."""
    M = V.shape[0]
    dd = np.zeros((M, M, M))
    for a, b in itertools.product(range(M), repeat=2):
        dd[:, a, b] = (ref.dz(ref.theta + t * V[b], V[a]) - ref.dz(ref.theta - t * V[b], V[a])) / (2 * t)
    return dd


def _ddntk1(ref, V, triples, t):
    """D³z_I[v_a, v_b, v_c] for every (a, b, c) of ``triples`` (four-point stencil): (I, k)."""
    th = ref.theta
    dd = np.zeros((V.shape[0], len(triples)))
    for k, (a, b, c) in enumerate(triples):
        f = lambda x, y: ref.dz(th + x * V[b] + y * V[c], V[a])  # noqa: E731
        dd[:, k] = (f(t, t) - f(t, -t) - f(-t, t) + f(-t, -t)) / (4 * t * t)
    return dd


def _ddntk2(ref, V, t):
    """Σ_μ λ_μ (Hess z_A v_C)_μ (Hess z_B v_D)_μ by central differences: (A, B, C, D)."""
    M, th = V.shape[0], ref.theta
    HV = np.zeros((M, M, len(th)))  # (Hess z_I v_J)_μ
    for mu in range(len(th)):
        e = np.zeros(len(th))
        e[mu] = t
        for b in range(M):
            HV[:, b, mu] = (ref.dz(th + e, V[b]) - ref.dz(th - e, V[b])) / (2 * t)
    return np.einsum("ACp,BDp,p->ABCD", HV, HV, ref.lam)


@pytest.fixture(scope="session")
def fd_reference():
    """The finite-difference reference helpers: ``jets``, ``dntk``, ``ddntk1``, ``ddntk2``."""
    return types.SimpleNamespace(Network=ReferenceNetwork, jets=_jets, dntk=_dntk, ddntk1=_ddntk1, ddntk2=_ddntk2)
