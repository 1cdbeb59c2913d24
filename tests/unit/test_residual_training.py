"""Gradient-descent training of real residual MLPs (pdlt.training) and the solver on ResidualMLP.

Deterministic checks: the training code's forward pass and output NTK agree with the residual
forward equation of :mod:`pdlt.residual_networks`, and one GD step is exactly
θ ← θ − η λ_θ ∂L/∂θ (finite differences).  Ensemble validation: tests/validation/
test_residual_training_vs_ensemble.py.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

import pdlt
from pdlt.errors import ParameterError
from pdlt.networks import sample_parameters
from pdlt.residual_networks import residual_apply
from pdlt.training import _forward, _gd_step, output_ntk
from pdlt_plugins.residual import ResidualMLP

X = np.array([[0.9, -0.4], [0.2, 1.1], [-0.7, -0.5]])


def _net(act="gelu", **kw):
    base = dict(input_dim=2, hidden_widths=[5, 5, 5], output_dim=3, activation=pdlt.activation(act),
                gamma=(0.0, 0.7, -0.4, 0.0), xi=(1.2, 0.8, 1.1, 0.9), c_b=0.1, c_w=1.3, lambda_b=(0.5, 1.0, 2.0, 1.5),
                lambda_w=(1.5, 0.7, 1.0, 2.0))
    base.update(kw)
    return ResidualMLP(**base)


@pytest.mark.parametrize("out, g_out", [(3, 0.0), (5, 0.5)])
def test_forward_and_output_ntk_match_residual_forward_equation(out, g_out):
    net = _net(output_dim=out, gamma=(0.0, 0.7, -0.4, g_out))
    params = sample_parameters(net, 4, np.random.default_rng(0))
    ref = residual_apply(net, params, X, gamma=net.gammas, xi=net.xis, ntk=True)
    zs, _ = _forward(net, params, X)
    for z, lay in zip(zs, ref):
        np.testing.assert_allclose(z, lay.z, rtol=1e-13, atol=1e-13)
    z, H = output_ntk(net, params, X)
    np.testing.assert_allclose(H, ref[-1].H, rtol=1e-11, atol=1e-12)  # both (S, n_L, n_L, N, N)


@pytest.mark.parametrize("out, g_out", [(3, 0.0), (5, 0.5)])
def test_gd_step_is_the_gradient_of_the_loss(out, g_out):
    net = _net("tanh", output_dim=out, gamma=(0.0, 0.7, -0.4, g_out))
    params = sample_parameters(net, 2, np.random.default_rng(1))
    y = np.random.default_rng(2).normal(size=(1, out, 2))
    XA = X[:2]

    def loss(p):
        return 0.5 * np.sum((_forward(net, p, XA)[0][-1] - y) ** 2, axis=(1, 2))

    eta = 1e-3
    after = copy.deepcopy(params)
    _gd_step(net, after, XA, y, eta)
    h = 1e-6
    for ell in range(params.depth):
        for kind, lam in (("weights", net.lambda_W[ell] / net.widths[ell]), ("biases", net.lambda_B[ell])):
            arr = getattr(params, kind)[ell]
            idx = (0,) + tuple(np.unravel_index(2, arr.shape[1:]))
            pp, pm = copy.deepcopy(params), copy.deepcopy(params)
            getattr(pp, kind)[ell][idx] += h
            getattr(pm, kind)[ell][idx] -= h
            grad = (loss(pp)[0] - loss(pm)[0]) / (2 * h)
            step = getattr(after, kind)[ell][idx] - arr[idx]
            assert step == pytest.approx(-eta * lam * grad, rel=1e-6, abs=1e-12), (ell, kind)


def test_plain_residual_trains_like_the_mlp():
    net = _net("tanh", gamma=0.0, xi=1.0)
    mlp = pdlt.MLP(input_dim=2, hidden_widths=[5, 5, 5], output_dim=3, activation=pdlt.activation("tanh"), c_b=0.1,
                   c_w=1.3, lambda_b=(0.5, 1.0, 2.0, 1.5), lambda_w=(1.5, 0.7, 1.0, 2.0))
    p1 = sample_parameters(net, 3, np.random.default_rng(3))
    p2 = copy.deepcopy(p1)
    y = np.zeros((1, 3, 2))
    e1 = _gd_step(net, p1, X[:2], y, 0.1)
    e2 = _gd_step(mlp, p2, X[:2], y, 0.1)
    np.testing.assert_array_equal(e1, e2)
    for a, b in zip(p1.weights, p2.weights):
        np.testing.assert_array_equal(a, b)


def test_solver_on_residual_networks():
    """Infinite width: GD, Newton step and Bayesian work; O(1/n) GD works for tanh and names the missing P..U for GELU."""
    net = ResidualMLP(input_dim=2, hidden_widths=[16] * 3, output_dim=1, activation=pdlt.activation("tanh"),
                      gamma=0.5).at_criticality()
    XA, XB, y = X[:2], X[2:], np.array([[0.3], [-0.2]])
    d = pdlt.solve(net, pdlt.GradientDescent(learning_rate=0.1), XA, y, XB, order="leading")
    s = pdlt.flow(net, X, order="leading")[-1]
    Th = np.asarray(s.Theta)
    np.testing.assert_allclose(d.mean_infinite, Th[2:, :2] @ np.linalg.solve(Th[:2, :2], y), rtol=1e-10)
    post = pdlt.solve(net, pdlt.Bayesian(noise_variance=0.1), XA, y, XB)
    assert post.mean_correction is not None and np.all(np.isfinite(post.mean_correction))
    # O(1/n) GD: P..U of residual layers, for odd σ (tanh) and non-odd σ (GELU, with the odd dNTK terms)
    d1 = pdlt.solve(net, pdlt.GradientDescent(learning_rate=0.1), XA, y, XB)
    assert d1.mean_correction is not None and np.all(np.isfinite(d1.mean_correction))
    gelu = net.evolve(activation=pdlt.activation("gelu")).at_criticality()
    d2 = pdlt.solve(gelu, pdlt.GradientDescent(learning_rate=0.1), XA, y, XB)
    assert np.all(np.isfinite(d2.mean_correction)) and np.all(np.isfinite(d2.covariance_correction))


def test_include_dntk_false_skips_the_dntk_statistics():
    """include_dntk=False needs no P..U (residual GELU): the frozen-NTK part only, which differs from the full result."""
    net = ResidualMLP(input_dim=2, hidden_widths=[16] * 3, output_dim=1, activation=pdlt.activation("gelu"), gamma=0.5).at_criticality()
    XA, XB, y = X[:2], X[2:], np.array([[0.3], [-0.2]])
    d = pdlt.solve(net, pdlt.GradientDescent(learning_rate=0.1, include_dntk=False), XA, y, XB)
    assert d.mean_correction is not None and np.all(np.isfinite(d.mean_correction)) and "include_dntk=False" in d.notes[0]
    full = pdlt.solve(net, pdlt.GradientDescent(learning_rate=0.1), XA, y, XB)
    assert not np.allclose(full.mean_correction, d.mean_correction, rtol=1e-3, atol=0)
