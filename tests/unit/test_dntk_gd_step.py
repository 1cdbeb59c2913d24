"""One gradient-descent step on real networks vs the dNTK/ddNTK (book §11.1, §∞.1).

Deterministic checks: the exact GD step of :func:`pdlt.dntk_ensemble.gd_step_ntk_change` against
the exact per-network differentials of :func:`pdlt.dntk_ensemble.output_differentials`, and the
closed-form mean of :func:`pdlt.dntk_ensemble.ntk_step_change_theory` against a brute-force Wick
contraction of the defining correlators (training.md §0).  The Monte Carlo comparison with the
recursions is in tests/validation/test_dntk_gd_step.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from pdlt.dntk_ensemble import _output_ntk, gd_step_ntk_change, ntk_step_change_theory, output_differentials, sample_gd_step
from pdlt.errors import NumericalError, ParameterError
from pdlt.flow import Statistics
from pdlt.networks import sample_parameters
from pdlt.training import output_ntk
from pdlt_plugins.activations import ReLU, Tanh
from pdlt_plugins.architectures import MLP

HYPER = dict(c_w=1.2, c_b=0.1, lambda_b=(0.8, 0.5, 1.3), lambda_w=(1.1, 0.7, 0.9))
X3 = np.random.default_rng(7).standard_normal((3, 2))
TRAIN = np.array([0, 2])
Y = np.array([[0.3, -0.5], [1.0, 0.2]])


def tiny_net(widths=(5, 4), n_out=2, act=None):
    return MLP(input_dim=2, hidden_widths=widths, output_dim=n_out, activation=act or Tanh(), **HYPER)


def exact_coefficients(net, params, X, train, y):
    """c_1 = −Σ_a (dĤ_{IJa} + dĤ_{JIa}) ε_a and c_2 = ½ Σ_ab (ddĤ^I_{IJab} + ddĤ^I_{JIab} + 2 ddĤ^II_{IJab}) ε_a ε_b."""
    S = params.size
    nL, N = net.widths[-1], X.shape[0]
    M = nL * N
    triples = np.array([(J, a, b) for J in range(M) for a in range(M) for b in range(M)])
    od = output_differentials(net, params, X, triples=triples)
    eps = np.zeros((S, nL, N))
    eps[:, :, train] = od.z[:, :, train] - y.T[None]
    e = eps.reshape(S, M)
    c1 = -(np.einsum("sIJa,sa->sIJ", od.dH, e) + np.einsum("sJIa,sa->sIJ", od.dH, e))
    d1 = od.ddH1.reshape(S, M, M, M, M)
    c2 = 0.5 * (np.einsum("sIJab,sa,sb->sIJ", d1, e, e) + np.einsum("sJIab,sa,sb->sIJ", d1, e, e)
                + 2 * np.einsum("sIJab,sa,sb->sIJ", od.ddH2, e, e))
    return c1, c2, od.H


def flat(dH, S, M):  # (S, nL, nL, N, N) -> (S, M, M) with I = i·N + δ
    return dH.transpose(0, 1, 3, 2, 4).reshape(S, M, M)


def test_fast_ntk_matches_training_output_ntk():
    net = MLP(input_dim=2, hidden_widths=(7, 5, 4), output_dim=3, activation=Tanh(), c_w=1.2, c_b=0.1,
              lambda_b=(0.8, 0.5, 1.0, 2.0), lambda_w=(1.1, 0.3, 2.0, 1.0))
    p = sample_parameters(net, 4, np.random.default_rng(0))
    np.testing.assert_allclose(_output_ntk(net, p, X3), output_ntk(net, p, X3)[1], rtol=0, atol=1e-13)


@pytest.mark.parametrize("widths", [(5, 4), (4, 6, 3)])
def test_gd_step_equals_dntk_and_ddntk_per_network(widths):
    """ΔĤ(±η) of the exact step: the odd part is η c_1 + O(η³), the even part η² c_2 + O(η⁴)."""
    net = tiny_net(widths) if len(widths) == 2 else None
    if len(widths) == 3:
        net = MLP(input_dim=2, hidden_widths=widths, output_dim=2, activation=Tanh(), c_w=1.2, c_b=0.1,
                  lambda_b=(0.8, 0.5, 1.3, 0.6), lambda_w=(1.1, 0.7, 0.9, 1.4))
    S, nL, N = 3, 2, 3
    M = nL * N
    params = sample_parameters(net, S, np.random.default_rng(0))
    c1, c2, H = exact_coefficients(net, params, X3, TRAIN, Y)
    errs = []
    for eta in (1e-2, 5e-3):
        H0, d = gd_step_ntk_change(net, params, X3, Y, TRAIN, etas=[eta, -eta])
        np.testing.assert_allclose(flat(H0, S, M), H, rtol=0, atol=1e-13)
        odd = (flat(d[0], S, M) - flat(d[1], S, M)) / (2 * eta)
        even = (flat(d[0], S, M) + flat(d[1], S, M)) / (2 * eta**2)
        errs.append((np.abs(odd - c1).max() / np.abs(c1).max(), np.abs(even - c2).max() / np.abs(c2).max()))
    (o1, e1), (o2, e2) = errs
    assert o1 < 2e-2 and e1 < 2e-2
    # the remainders are O(η²): halving η divides them by 4
    assert 3.5 < o1 / o2 < 4.5 and 3.5 < e1 / e2 < 4.5


def test_gd_step_does_not_modify_params_and_zero_eta():
    net = tiny_net()
    params = sample_parameters(net, 2, np.random.default_rng(1))
    before = [w.copy() for w in params.weights]
    _, d = gd_step_ntk_change(net, params, X3, Y, TRAIN, etas=[0.0, 0.1])
    assert np.all(d[0] == 0)
    assert all(np.array_equal(a, b) for a, b in zip(before, params.weights))


# --------------------------------------------------------------------------- theory vs brute force
def wick_tensors(st, nL):
    """Full neural×sample tensors n·E[dĤ z], n·E[ddĤ^I], n·E[ddĤ^II] from P…U (training.md §0)."""
    d = np.eye(nL)
    P, Q, R, S, T, U = (getattr(st, k) for k in "PQRSTU")
    Edz = (np.einsum("ad,bc,wxyz->abcdwxyz", d, d, P) + np.einsum("ab,cd,wxyz->abcdwxyz", d, d, Q)
           + np.einsum("ac,bd,wyxz->abcdwxyz", d, d, Q))
    # R_0231 = R[α0, α2, α3, α1]; R_0312 = R[α0, α3, α1, α2]
    Ed1 = (np.einsum("ab,cd,wxyz->abcdwxyz", d, d, R) + np.einsum("ac,db,wyzx->abcdwxyz", d, d, R)
           + np.einsum("ad,bc,wzxy->abcdwxyz", d, d, R))
    # T_1342 = T[α1, α3, α4, α2]; U_1423 = U[α1, α4, α2, α3]
    Ed2 = (np.einsum("ab,cd,wxyz->abcdwxyz", d, d, S) + np.einsum("ac,db,wyzx->abcdwxyz", d, d, T)
           + np.einsum("ad,bc,wzxy->abcdwxyz", d, d, U))
    return Edz, Ed1, Ed2


def brute_force(st, y, train, nL):
    N = st.K.shape[0]
    Edz, Ed1, Ed2 = wick_tensors(st, nL)
    A = np.asarray(train)
    first = np.zeros((nL, nL, N, N))
    second = np.zeros((nL, nL, N, N))
    Mk = np.zeros((nL, nL, N, N))  # E[ε_{k;β} ε_{k';γ}] at leading order, on A only
    for bi, b in enumerate(A):
        for ci, c in enumerate(A):
            Mk[:, :, b, c] = np.eye(nL) * st.K[b, c] + np.outer(y[bi], y[ci])
    for i1 in range(nL):
        for i2 in range(nL):
            for d1 in range(N):
                for d2 in range(N):
                    first[i1, i2, d1, d2] = -sum(Edz[i1, i2, k, k, d1, d2, a, a] + Edz[i2, i1, k, k, d2, d1, a, a]
                                                for k in range(nL) for a in A)
                    second[i1, i2, d1, d2] = 0.5 * sum(
                        (Ed1[i1, i2, k, q, d1, d2, b, c] + Ed1[i2, i1, k, q, d2, d1, b, c] + 2 * Ed2[i1, i2, k, q, d1, d2, b, c])
                        * Mk[k, q, b, c] for k in range(nL) for q in range(nL) for b in A for c in A)
    return first, second


def random_stats(N, rng):
    K = rng.standard_normal((N, N))
    K = K @ K.T + N * np.eye(N)
    # random tensors with the exact symmetries of training.md §0 (P_0123 = P_0213, R_0123 = R_0132,
    # S_1234 = S_2143, T_1342 = T_2431, U_1423 = U_2314), which the second order relies on
    perms = {"P": (0, 2, 1, 3), "Q": None, "R": (0, 1, 3, 2), "S": (1, 0, 3, 2), "T": (3, 2, 1, 0), "U": (2, 3, 0, 1)}
    tensors = {}
    for name, perm in perms.items():
        x = rng.standard_normal((N,) * 4)
        tensors[name] = x if perm is None else 0.5 * (x + x.transpose(perm))
    return Statistics(layer=3, width=2, fan_in=4, K=K, **tensors)


@pytest.mark.parametrize("nL,train", [(2, [0, 2]), (3, [1]), (1, [0, 1, 2])])
def test_theory_matches_brute_force_wick_contraction(nL, train):
    rng = np.random.default_rng(3)
    st = random_stats(3, rng)
    y = rng.standard_normal((len(train), nL))
    first, second = ntk_step_change_theory(st, y, train)
    bf1, bf2 = brute_force(st, y, np.array(train), nL)
    np.testing.assert_allclose(first, bf1, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(second, bf2, rtol=1e-12, atol=1e-12)


def test_theory_structure():
    """First order: ∝ δ_{i1i2}, symmetric, label independent; second order: δ_{i1i2} part plus y_{i1}y_{i2} terms."""
    rng = np.random.default_rng(4)
    st = random_stats(3, rng)
    y = rng.standard_normal((2, 2))
    f, s = ntk_step_change_theory(st, y, [0, 1])
    f0, s0 = ntk_step_change_theory(st, 0 * y, [0, 1])
    np.testing.assert_array_equal(f, f0)
    assert np.all(f[0, 1] == 0) and np.all(s0[0, 1] == 0) and np.any(s[0, 1] != 0)
    np.testing.assert_allclose(f, f.transpose(1, 0, 3, 2), atol=1e-14)
    np.testing.assert_allclose(s, s.transpose(1, 0, 3, 2), atol=1e-14)


# --------------------------------------------------------------------------- errors
def test_errors_name_parameter_and_value():
    net = tiny_net()
    params = sample_parameters(net, 2, np.random.default_rng(1))
    with pytest.raises(ParameterError, match="'train'.*\\[0, 5\\]"):
        gd_step_ntk_change(net, params, X3, Y, [0, 5], etas=[0.1])
    with pytest.raises(ParameterError, match="'y'.*\\(2, 2\\).*\\(2, 3\\)"):
        gd_step_ntk_change(net, params, X3, np.zeros((2, 3)), TRAIN, etas=[0.1])
    with pytest.raises(ParameterError, match="'eta'.*-0.1"):
        sample_gd_step(net, X3, Y, TRAIN, eta=-0.1, size=10)
    with pytest.raises(NumericalError, match="relu"):
        sample_gd_step(tiny_net(act=ReLU()), X3, Y, TRAIN, eta=0.1, size=10)
    with pytest.raises(ParameterError, match="'stats'.*P"):
        ntk_step_change_theory(Statistics(layer=3, width=2, fan_in=4, K=np.eye(3)), Y, TRAIN)


def test_sample_gd_step_is_seeded_and_antithetic_unbiased():
    net = tiny_net((6, 6))
    a = sample_gd_step(net, X3, Y, TRAIN, eta=0.05, size=60, seed=5)
    b = sample_gd_step(net, X3, Y, TRAIN, eta=0.05, size=60, seed=5)
    assert a == b
    assert a.first.shape == (2, 2, 3, 3) and a.fan_in == 6
    # the O(η²) part of the plain estimates is what Richardson removes; it is small at η = 0.05
    assert np.all(np.abs(a.first_remainder.mean) <= 0.05 * np.abs(a.first.mean).max())
