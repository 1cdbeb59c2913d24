"""Bayesian posterior to O(1/n) with a third cumulant (residual output layer, σ not odd).

Exact check: a nearly-Gaussian family z = g + ε(a − E a), a_{i;γ} = Σ_k g_kᵀ M_γ g_k with g_k ~ N(0, K)
i.i.d. over neurons k, has K unchanged, fourth cumulant O(ε²) and third cumulant
κ3 = δ_ik Ω_(αβ)γ + δ_im Ω_(αγ)β + δ_km Ω_(βγ)α with Ω_(αβ)γ = 2ε(K M_γ K)_αβ: exactly the structure of
:class:`pdlt_plugins.residual.ResidualStatistics`.  The exact posterior (Gaussian observation noise,
Gauss–Hermite quadrature over g) differentiated in ε at ε = 0 must equal ``mean_correction``,
``covariance_correction`` and the O(1/n) log-evidence term with fan-in 1 and V = G1 = 0.
Real residual networks: tests/validation/test_residual_vs_ensemble.py (Bayesian posterior).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import pdlt
from pdlt.errors import ParameterError
from pdlt_plugins.residual import ResidualStatistics


def _model(N, nL, seed):
    rng = np.random.default_rng(seed)
    Lk = rng.normal(size=(N, N)) * 0.3 + np.eye(N)
    K = Lk @ Lk.T
    M = rng.normal(size=(N, N, N))
    M = 0.5 * (M + M.transpose(0, 2, 1))  # M[γ] symmetric
    Om = 2.0 * np.einsum("ab,gbc,cd->adg", K, M, K)  # Ω_(αβ)γ = 2 (K M_γ K)_αβ, per unit ε
    return K, M, Om


def _exact(K, M, y, A, B, noise, eps, deg=16):
    """E[z_B|y], Cov[z_B|y] and log p(y) − log p_0(y) for z = g + ε(a − Ea), by tensor Gauss–Hermite.

    The nodes follow the ε = 0 posterior of g (Gaussian, per neuron), so the integrand is the smooth
    likelihood ratio L_ε/L_0 and the rule converges fast.
    """
    N, nL = K.shape[0], y.shape[1]
    Kt = K[np.ix_(A, A)] + noise * np.eye(len(A))
    mu = (K[:, A] @ np.linalg.solve(Kt, y)).T  # (nL, N)
    Lc = np.linalg.cholesky(K - K[:, A] @ np.linalg.solve(Kt, K[A, :]))
    x, w = np.polynomial.hermite_e.hermegauss(deg)
    w = w / w.sum()
    U = np.array(list(itertools.product(range(deg), repeat=nL * N)))
    u, wt = x[U], np.prod(w[U], axis=1)
    g = mu[None] + np.einsum("ab,snb->sna", Lc, u.reshape(-1, nL, N))  # (S, nL, N)
    a = np.einsum("ska,gab,skb->sg", g, M, g)  # Σ_k g_kᵀ M_γ g_k, the same for every neuron i
    z = g + eps * (a - nL * np.einsum("gab,ab->g", M, K))[:, None, :]
    r, r0 = y.T[None] - z[:, :, A], y.T[None] - g[:, :, A]
    p = wt * np.exp(-0.5 * (np.sum(r * r, axis=(1, 2)) - np.sum(r0 * r0, axis=(1, 2))) / noise)
    Z = p.sum()
    zb = z[:, :, B]  # (S, nL, N_B)
    mean = np.einsum("s,sie->ei", p, zb) / Z
    second = np.einsum("s,sie,sjf->eifj", p, zb, zb) / Z
    return mean, second - np.einsum("ei,fj->eifj", mean, mean), np.log(Z)


@pytest.mark.parametrize("N, nL, nA", [(3, 1, 2), (2, 2, 1)])
def test_third_cumulant_posterior_is_the_derivative_of_the_exact_posterior(N, nL, nA):
    K, M, Om = _model(N, nL, seed=N + 10 * nL)
    A, B = np.arange(nA), np.arange(nA, N)
    y = np.random.default_rng(3).normal(size=(nA, nL))
    noise = 0.4
    stats = ResidualStatistics(layer=2, width=nL, fan_in=1, K=K, Theta=K, V=np.zeros((N,) * 4), G1=np.zeros((N, N)), Omega=Om)
    alg = pdlt.Bayesian(noise_variance=noise)
    d = alg.trained_distribution(stats, A, y, B)
    eps = 1e-3
    f = {k: _exact(K, M, y, A, B, noise, k * eps) for k in (-2, -1, 0, 1, 2)}

    def deriv(j):  # Richardson: O(ε⁴)
        return (8 * (f[1][j] - f[-1][j]) - (f[2][j] - f[-2][j])) / (12 * eps)

    np.testing.assert_allclose(f[0][0], d.mean_infinite, atol=1e-10)
    np.testing.assert_allclose(f[0][1], d.covariance_infinite, atol=1e-10)
    np.testing.assert_allclose(deriv(0), d.mean_correction, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(deriv(1), d.covariance_correction, rtol=1e-6, atol=1e-7)
    dlog = alg.log_evidence(stats, y, A, corrections=True) - alg.log_evidence(stats, y, A)
    assert deriv(2) == pytest.approx(dlog, rel=1e-6, abs=1e-7)
    # power: the third-cumulant terms are what makes the derivative non-zero here
    assert np.abs(d.mean_correction).max() > 0.05 and np.abs(d.covariance_correction).max() > 0.05


def test_gradient_descent_refuses_three_point_outputs():
    N = 3
    K, _, Om = _model(N, 1, seed=1)
    z4 = np.zeros((N,) * 4)
    stats = ResidualStatistics(layer=2, width=1, fan_in=4, K=K, Theta=K, V=z4, G1=np.zeros((N, N)), H1=np.zeros((N, N)),
                               A=z4, B=z4, D=z4, F=z4, Omega=Om)
    gd = pdlt.GradientDescent(learning_rate=0.1, include_dntk=False)
    with pytest.raises(ParameterError, match="three-point tensors"):
        gd.trained_distribution(stats, [0, 1], np.ones((2, 1)), [2])
    assert gd.trained_distribution(stats, [0, 1], np.ones((2, 1)), [2], corrections=False).mean_correction is None
