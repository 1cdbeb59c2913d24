"""Residual MLPs trained by gradient descent: real networks against ``pdlt.solve`` at infinite width.

Real residual networks (book Appendix B) are trained to convergence by full-batch GD with
:func:`pdlt.training.train_ensemble` (antithetic pairs and the control variate z_lin, whose mean is
the infinite-width trained mean m^∞ exactly).  At two widths n the deviation n·(E[z_T] − m^∞) is
measured and fitted as a + b/n; the infinite-width prediction holds when m(n) − m^∞ = O(1/n), i.e.
when the fitted n(E[z_T] − m^∞) has a finite intercept — equivalently E[z_T] − m^∞ → 0 like 1/n.  We
check the fitted E[z_T] (a + b/n on the raw means) against m^∞ and the fitted trained covariance
against Σ^∞, both with |a − theory| ≤ 4 SE(a).  Power: the infinite-width prediction of the plain MLP
with the same branch hyperparameters (γ = 0) is excluded.

Only a smooth σ (tanh) is checked: for ReLU (γ = 0.6, two-dimensional inputs) the measured
n(E[z_T] − m^∞) grows like √n over n = 16..128 (0.57, 0.84, 1.36, 1.94 for one component), i.e. the
GD-trained mean approaches m^∞ only like n^{-1/2}; see docs/residual.md.

The O(1/n) GD prediction for residual networks with odd σ (residual P..U, docs/residual.md) is checked
against real trained residual networks in tests/validation/test_residual_dntk_vs_ensemble.py; for
non-odd σ ``pdlt.solve`` raises a ParameterError (the three-point dNTK terms are not derived).
"""

from __future__ import annotations

import numpy as np

import pdlt
from pdlt.training import train_ensemble
from pdlt_plugins.residual import ResidualMLP

K_SIGMA = 4.0
Y = np.array([[0.6, -0.3], [-0.4, 0.5]])


def _net(act, n, gamma, n_in):
    return ResidualMLP(input_dim=n_in, hidden_widths=[n] * 2, output_dim=2, activation=pdlt.activation(act), gamma=gamma,
                       xi=0.9, c_b=0.05).at_criticality()


def _fit(ns, ms, ses):
    """Weighted least squares m(n) = a + b/n per component; returns a, SE(a)."""
    A = np.stack([np.ones(len(ns)), 1.0 / np.asarray(ns, dtype=float)], axis=1)
    ms, ses = np.asarray(ms).reshape(len(ns), -1), np.asarray(ses).reshape(len(ns), -1)
    a, se = np.empty(ms.shape[1]), np.empty(ms.shape[1])
    for j in range(ms.shape[1]):
        W = np.diag(1.0 / ses[:, j] ** 2)
        cov = np.linalg.inv(A.T @ W @ A)
        a[j], se[j] = (cov @ A.T @ W @ ms[:, j])[0], np.sqrt(cov[0, 0])
    return a, se


def _check(act, XA, XB, ns, sizes, gamma=0.6, seed=0):
    n_in = XA.shape[1]
    D = np.vstack([XA, XB])
    s = pdlt.flow(_net(act, ns[0], gamma, n_in), D, order="leading")[-1]
    eta = 0.5 / np.linalg.eigvalsh(np.asarray(s.Theta)[:2, :2])[-1]
    th = pdlt.solve(_net(act, ns[0], gamma, n_in), pdlt.GradientDescent(learning_rate=eta), XA, Y, XB, order="leading")
    plain = pdlt.solve(_net(act, ns[0], 0.0, n_in), pdlt.GradientDescent(learning_rate=eta), XA, Y, XB, order="leading")
    runs = [train_ensemble(_net(act, n, gamma, n_in), XA, Y, XB, learning_rate=eta, size=size, seed=seed + n,
                           control_variate=True, tol=1e-10) for n, size in zip(ns, sizes)]
    for r in runs:
        assert r.max_residual < 1e-10
    am, sem = _fit(ns, [r.mean.mean for r in runs], [r.mean.stderr for r in runs])
    ac, sec = _fit(ns, [r.covariance.mean for r in runs], [r.covariance.stderr for r in runs])
    zm = (am - th.mean_infinite.ravel()) / sem
    zc = (ac - th.covariance_infinite.ravel()) / sec
    zp = (am - plain.mean_infinite.ravel()) / sem
    print(f"\n{act} residual GD (γ = {gamma}): mean {np.round(am, 4)} ± {np.round(sem, 4)} vs m^∞ {np.round(th.mean_infinite.ravel(), 4)}"
          f"; max |z| mean {np.max(np.abs(zm)):.2f}, covariance {np.max(np.abs(zc)):.2f}; plain-MLP m^∞ at max |z| {np.max(np.abs(zp)):.1f}")
    assert np.all(np.abs(zm) <= K_SIGMA), zm
    assert np.all(np.abs(zc) <= K_SIGMA), zc
    assert np.max(np.abs(zp)) > K_SIGMA  # power: the plain MLP's trained mean is excluded
    return zm, zc


def test_tanh_residual_gd_infinite_width():
    _check("tanh", np.array([[-1.2], [1.0]]), np.array([[0.2], [1.8]]), (16, 32), (4000, 2000))
