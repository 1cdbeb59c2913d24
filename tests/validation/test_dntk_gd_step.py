"""One gradient-descent step of real networks: the mean NTK change is the dNTK's (book §11.1, §∞.1).

Each network of an ensemble takes one exact full-batch GD step on the MSE loss (learning-rate
tensor λ_b, λ_W/n_{ℓ−1}, global η) and its NTK is recomputed
(:func:`pdlt.dntk_ensemble.sample_gd_step`).  The η and η² coefficients of the mean change,
n_{L−1}·E[ΔĤ] = η·first + η²·second + O(η³), are separated per network by symmetric differences at
±η, ±2η (Richardson: remainder O(η⁴)) and compared with :func:`ntk_step_change_theory` on the
recursions' P, Q (first order) and R, S, T, U, K (second order).  The theory is leading order in
1/n, so n·E[…] is fitted by a + b/n over two or more widths and |a − theory| ≤ 4 SE(a) is required
for every component.  Power: the wrong alternatives (the n_L factor of Q dropped, the label terms of
the second order dropped, the second order ignored in a plain one-step estimate) are excluded.
"""

from __future__ import annotations

import numpy as np
import pytest

import pdlt
from pdlt.dntk_ensemble import ntk_step_change_theory, sample_gd_step
from pdlt_plugins.activations import Tanh
from pdlt_plugins.architectures import MLP

K_SIGMA = 4.0
HYPER = dict(c_w=1.2, c_b=0.1, lambda_b=0.8, lambda_w=1.1)
X3 = np.random.default_rng(2024).standard_normal((3, 2))  # samples 0, 1 train, 2 test
TRAIN = np.array([0, 1])
Y = np.array([[0.5, -0.3], [-0.4, 0.6]])
ETA = 0.05


def extrapolate(runs):
    """Weighted least squares m(n) = a + b/n per component over runs = [(n, Estimate)]; returns (a, SE(a))."""
    inv = np.array([1.0 / n for n, _ in runs])
    m = np.stack([e.mean for _, e in runs])
    w = 1.0 / np.stack([e.stderr for _, e in runs]) ** 2
    x = inv.reshape((-1,) + (1,) * (m.ndim - 1))
    S0, S1, S2 = w.sum(0), (w * x).sum(0), (w * x**2).sum(0)
    Sy, Sxy = (w * m).sum(0), (w * x * m).sum(0)
    det = S0 * S2 - S1**2
    return (S2 * Sy - S1 * Sxy) / det, np.sqrt(S2 / det)


def run(hidden, widths_list, size, seed, eta=ETA, n_out=2):
    """Fits of n·E[first], n·E[second] over the widths and the (width-independent) theory."""
    runs1, runs2, runs_step = [], [], []
    theory = None
    for hidden_widths in widths_list:
        net = MLP(input_dim=2, hidden_widths=hidden_widths, output_dim=n_out, activation=Tanh(), **HYPER)
        st = sample_gd_step(net, X3, Y[:, :n_out], TRAIN, eta=eta, size=size, seed=seed)
        th = ntk_step_change_theory(pdlt.flow(net, X3, order="dntk")[-1], Y[:, :n_out], TRAIN)
        if theory is not None:  # the theory depends on the width ratios only
            np.testing.assert_allclose(th[0], theory[0], rtol=1e-10)
        theory = th
        n = hidden_widths[-1]
        runs1.append((n, st.first))
        runs2.append((n, st.second))
        runs_step.append((n, st.step))
        # the O(η²) part that Richardson removes is below the statistical error already, so the
        # O(η⁴) remainder of the Richardson estimate is negligible
        assert np.all(np.abs(st.first_remainder.mean) <= st.first.stderr)
        assert np.all(np.abs(st.second_remainder.mean) <= st.second.stderr)
    return extrapolate(runs1), extrapolate(runs2), extrapolate(runs_step), theory


def z(fit, value):
    a, se = fit
    return (a - value) / se


def check(hidden, widths_list, size, seed, eta=ETA, min_power=K_SIGMA):
    fit1, fit2, fit_step, (first, second) = run(hidden, widths_list, size, seed, eta)
    z1, z2 = z(fit1, first), z(fit2, second)
    assert np.max(np.abs(z1)) <= K_SIGMA, f"first order: max |z| = {np.max(np.abs(z1)):.2f}"
    assert np.max(np.abs(z2)) <= K_SIGMA, f"second order: max |z| = {np.max(np.abs(z2)):.2f}"
    # power: n_L Q → Q (the sum over the output index of the residual dropped) and the second order
    # without the label terms (E[εε] = K only) are excluded
    st = pdlt.flow(MLP(input_dim=2, hidden_widths=widths_list[0], output_dim=2, activation=Tanh(), **HYPER), X3, order="dntk")[-1]
    no_nl = ntk_step_change_theory(st, Y, TRAIN)[0] - (2 - 1) * _q_term(st)
    no_labels = ntk_step_change_theory(st, 0 * Y, TRAIN)[1]
    p1, p2 = np.max(np.abs(z(fit1, no_nl))), np.max(np.abs(z(fit2, no_labels)))
    assert p1 > min_power and p2 > min_power, f"power: {p1:.1f}, {p2:.1f}"
    # a single forward step at η carries η·second: comparing it with 'first' alone would fail
    p3 = np.max(np.abs(z(fit_step, first)))
    assert np.max(np.abs(z(fit_step, first + eta * second))) <= K_SIGMA
    return dict(max_z1=np.max(np.abs(z1)), max_z2=np.max(np.abs(z2)), power=(p1, p2, p3), step_z=np.max(np.abs(z(fit_step, first + eta * second))))


def _q_term(st):
    """−δ_{i1i2} Σ_α (Q_{δ1δ2αα} + Q_{δ2δ1αα}) on the training samples: the part multiplied by n_L."""
    A = TRAIN
    q = np.einsum("abcc->ab", st.Q[:, :, A][..., A])
    return -np.eye(2)[:, :, None, None] * (q + q.T)[None, None]


def test_one_gd_step_tanh_depth3():
    """Default suite: widths 16, 32 (10⁴ networks each, antithetic pairs), ≈ 5 s."""
    check((16, 16), [(16, 16), (32, 32)], size=10_000, seed=11)


@pytest.mark.slow
def test_one_gd_step_tanh_depth3_three_widths():
    check((32, 32), [(32, 32), (64, 64), (128, 128)], size=40_000, seed=12)


@pytest.mark.slow
def test_one_gd_step_tanh_depth4_unequal_widths():
    # deeper: the η-series converges more slowly, so a smaller step keeps its O(η²) part below the SE
    check((32, 16, 16), [(32, 16, 16), (64, 32, 32)], size=40_000, seed=13, eta=0.02)
