"""Hypothesis properties of pdlt.wick: symmetries and identities that must hold for every
covariance, not just the hand-picked ones of tests/unit/test_wick.py.

Example counts come from the active Hypothesis profile (``HYPOTHESIS_PROFILE``); the tests only
switch off the deadline because the first call of an einsum path is slow.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pdlt.wick import (
    connected_four_point,
    connected_six_point,
    cumulants_from_moments,
    full_four_point,
    full_six_point,
    gaussian_moment,
    gaussian_moment_tensor,
    layer_action_couplings,
    moments_from_cumulants,
    pairings,
    quartic_action_correlators,
    quartic_coupling_from_connected,
    symmetrize,
)

relaxed = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

entries = st.floats(-2.0, 2.0, allow_nan=False, allow_infinity=False)


@st.composite
def psd_matrices(draw, min_size: int = 1, max_size: int = 4, jitter=(1e-3, 0.5)):
    """K = A Aᵀ + δ I: symmetric positive definite with eigenvalues >= δ."""
    n = draw(st.integers(min_size, max_size))
    A = draw(hnp.arrays(float, (n, n), elements=entries))
    delta = draw(st.floats(*jitter))
    K = A @ A.T + delta * np.eye(n)
    return 0.5 * (K + K.T)


@st.composite
def matrix_and_indices(draw, max_len: int = 6):
    K = draw(psd_matrices())
    idx = draw(st.lists(st.integers(0, K.shape[0] - 1), min_size=0, max_size=max_len))
    return K, tuple(idx)


def contract_all(T: np.ndarray, A: np.ndarray) -> np.ndarray:
    for axis in range(T.ndim):
        T = np.moveaxis(np.tensordot(A, T, axes=([1], [axis])), 0, axis)
    return T


def scale(K: np.ndarray, order: int) -> float:
    return float(np.abs(K).max()) ** (order // 2) + 1e-300


# ----------------------------------------------------------------------------------- pairings
@given(st.lists(st.integers(), min_size=0, max_size=10))
def test_pairing_count_and_coverage(items):
    matchings = list(pairings(items))
    if len(items) % 2:
        assert matchings == []
        return
    assert len(matchings) == math.prod(range(len(items) - 1, 0, -2))
    for matching in matchings:
        assert sorted(x for pair in matching for x in pair) == sorted(items)


# ------------------------------------------------------------------------------ Wick moments
@relaxed
@given(matrix_and_indices(), st.randoms(use_true_random=False))
@example((np.array([[1.0]]), (0, 0, 0, 0, 0, 0)), None)
def test_moment_is_symmetric_under_permutations(case, rnd):
    K, idx = case
    shuffled = list(idx)
    if rnd is not None:
        rnd.shuffle(shuffled)
    assert math.isclose(gaussian_moment(tuple(shuffled), K), gaussian_moment(idx, K), rel_tol=1e-12, abs_tol=1e-12 * scale(K, len(idx)))


@relaxed
@given(matrix_and_indices(), st.floats(0.1, 10.0))
@example((np.eye(2), (0, 1, 0, 1)), 3.0)
def test_moment_is_homogeneous_of_degree_m(case, c):
    K, idx = case
    m = len(idx) // 2
    expected = c**m * gaussian_moment(idx, K)
    assert math.isclose(gaussian_moment(idx, c * K), expected, rel_tol=1e-10, abs_tol=1e-12 * scale(c * K, len(idx)))


@relaxed
@given(matrix_and_indices(max_len=7))
def test_odd_moments_vanish_and_tensor_agrees(case):
    K, idx = case
    if len(idx) % 2:
        assert gaussian_moment(idx, K) == 0.0
    elif len(idx) <= 6:
        M = gaussian_moment_tensor(K, len(idx))
        assert math.isclose(float(M[idx]), gaussian_moment(idx, K), rel_tol=1e-11, abs_tol=1e-12 * scale(K, len(idx)))


@relaxed
@given(psd_matrices(), st.sampled_from([2, 4, 6]))
def test_moment_tensor_is_fully_symmetric(K, order):
    M = gaussian_moment_tensor(K, order)
    tol = 1e-12 * scale(K, order)
    for perm in [(1, 0) + tuple(range(2, order)), tuple(range(1, order)) + (0,)]:
        assert np.abs(M - M.transpose(perm)).max() <= tol


@relaxed
@given(psd_matrices())
def test_four_and_six_point_moments_are_psd_over_index_groups(K):
    # E[(z⊗z)(z⊗z)ᵀ] and E[(z⊗z⊗z)(z⊗z⊗z)ᵀ] are Gram matrices, hence PSD.
    N = K.shape[0]
    for order in (4, 6):
        M = gaussian_moment_tensor(K, order).reshape(N ** (order // 2), N ** (order // 2))
        eig = np.linalg.eigvalsh(0.5 * (M + M.T))
        assert eig[0] >= -1e-10 * max(eig[-1], 1e-300)


@relaxed
@given(psd_matrices(), st.data())
def test_moment_tensor_is_linearly_covariant(K, data):
    # z → A z maps K → A K Aᵀ and every moment tensor by A on each axis.
    N = K.shape[0]
    A = data.draw(hnp.arrays(float, (N, N), elements=entries))
    K_new = A @ K @ A.T
    for order in (2, 4):
        expected = contract_all(gaussian_moment_tensor(K, order), A)
        got = gaussian_moment_tensor(0.5 * (K_new + K_new.T), order)
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-10 * scale(K_new, order))


# ------------------------------------------------------------------------------- cumulants
@relaxed
@given(psd_matrices())
def test_connected_correlators_of_gaussian_vanish(K):
    M2, M4, M6 = (gaussian_moment_tensor(K, k) for k in (2, 4, 6))
    assert np.abs(connected_four_point(M2, M4)).max() <= 1e-12 * scale(K, 4)
    assert np.abs(connected_six_point(M2, M4, M6)).max() <= 1e-12 * scale(K, 6)


@st.composite
def symmetric_discrete_laws(draw):
    """A parity-even discrete law: atoms ±x_j with weights p_j/2 (zero mean, odd moments 0)."""
    n = draw(st.integers(1, 3))
    atoms = draw(st.integers(1, 4))
    x = draw(hnp.arrays(float, (atoms, n), elements=entries))
    p = np.array(draw(st.lists(st.floats(0.1, 1.0), min_size=atoms, max_size=atoms)))
    return x, p / p.sum()


def discrete_moment_fn(x: np.ndarray, p: np.ndarray):
    def moment(sub):
        sub = tuple(sub)
        # ±x atoms: odd products cancel exactly.
        return 0.0 if len(sub) % 2 else float(np.sum(p * np.prod(x[:, list(sub)], axis=1)))
    return moment


def discrete_tensor(x: np.ndarray, p: np.ndarray, order: int) -> np.ndarray:
    letters = "abcdef"[:order]
    return np.einsum("j," + ",".join(f"j{c}" for c in letters) + "->" + letters, p, *([x] * order))


@relaxed
@given(symmetric_discrete_laws())
def test_tensor_cumulants_agree_with_set_partition_formula(law):
    x, p = law
    M2, M4, M6 = (discrete_tensor(x, p, k) for k in (2, 4, 6))
    C4, C6 = connected_four_point(M2, M4), connected_six_point(M2, M4, M6)
    fn = discrete_moment_fn(x, p)
    n = x.shape[1]
    tol = 1e-10 * (1 + float(np.abs(x).max()) ** 6)
    for idx in [(0, 0, 0, 0), (0, n - 1, 0, n - 1), (0,) * 3 + (n - 1,) * 3, tuple(i % n for i in range(6))]:
        target = C4 if len(idx) == 4 else C6
        assert abs(target[idx] - cumulants_from_moments(fn, idx)) <= tol


@relaxed
@given(symmetric_discrete_laws())
def test_moment_cumulant_tensor_round_trips(law):
    x, p = law
    M2, M4, M6 = (discrete_tensor(x, p, k) for k in (2, 4, 6))
    tol = 1e-12 * (1 + float(np.abs(x).max()) ** 6)
    C4 = connected_four_point(M2, M4)
    np.testing.assert_allclose(full_four_point(M2, C4), M4, rtol=0, atol=tol)
    np.testing.assert_allclose(full_six_point(M2, C4, connected_six_point(M2, M4, M6)), M6, rtol=0, atol=tol)


@relaxed
@given(hnp.arrays(float, (3, 2), elements=entries), st.lists(st.integers(0, 1), min_size=1, max_size=6))
def test_set_partition_round_trip_for_general_laws(atoms, idx):
    # Three equally likely atoms in R²: non-zero mean and odd moments allowed.
    def moment(sub):
        return float(np.mean(np.prod(atoms[:, list(sub)], axis=1)))

    cumulant = lambda sub: cumulants_from_moments(moment, sub)
    back = moments_from_cumulants(cumulant, tuple(idx))
    assert math.isclose(back, moment(idx), rel_tol=1e-9, abs_tol=1e-9 * (1 + float(np.abs(atoms).max()) ** len(idx)))


# ------------------------------------------------------------------------- quartic action
@st.composite
def positive_quartic(draw, N: int):
    """V = Σ_r c_r u_r^{⊗4}, c_r > 0: a positive quartic coupling."""
    r = draw(st.integers(1, 3))
    us = draw(hnp.arrays(float, (r, N), elements=entries))
    cs = np.array(draw(st.lists(st.floats(0.1, 2.0), min_size=r, max_size=r)))
    return np.einsum("r,ra,rb,rc,rd->abcd", cs, us, us, us, us)


@relaxed
@given(psd_matrices(), st.data(), st.floats(1e-4, 1e-1))
def test_positive_coupling_gives_negative_connected_four_point(K, data, eps):
    N = K.shape[0]
    V = data.draw(positive_quartic(N))
    y = data.draw(hnp.arrays(float, (N,), elements=entries))
    C4 = quartic_action_correlators(K, V, eps).connected_four_point
    # C4(y, y, y, y) = −ε Σ_r c_r (u_r·K y)⁴ ≤ 0.
    assert np.einsum("abcd,a,b,c,d->", C4, y, y, y, y) <= 1e-12 * scale(K, 8) * (1 + float(np.abs(V).max()))


@relaxed
@given(psd_matrices(), st.data(), st.floats(-1.0, 1.0))
def test_quartic_correlators_are_linear_in_eps_and_symmetric(K, data, eps):
    N = K.shape[0]
    V = symmetrize(data.draw(hnp.arrays(float, (N,) * 4, elements=entries)))
    two, four = quartic_action_correlators(K, V, eps)
    two1, four1 = quartic_action_correlators(K, V, 1.0)
    k, v = float(np.abs(K).max()), float(np.abs(V).max())
    tol2, tol4 = 1e-12 * (k + k**3 * v), 1e-12 * k**4 * v + 1e-300
    assert np.abs((two - K) - eps * (two1 - K)).max() <= tol2
    assert np.abs(four - eps * four1).max() <= tol4
    assert np.abs(two - two.T).max() == 0.0
    assert np.abs(four - four.transpose(1, 2, 3, 0)).max() <= tol4


@relaxed
@given(psd_matrices(jitter=(0.2, 1.0)), st.data(), st.floats(0.01, 1.0))
def test_quartic_coupling_round_trip(K, data, eps):
    N = K.shape[0]
    V = symmetrize(data.draw(hnp.arrays(float, (N,) * 4, elements=entries)))
    C4 = quartic_action_correlators(K, V, eps).connected_four_point
    V_back = quartic_coupling_from_connected(K, C4, eps=eps)
    cond = np.linalg.cond(K)
    np.testing.assert_allclose(V_back, V, rtol=0, atol=1e-11 * cond**4 * (1 + float(np.abs(V).max())))


@relaxed
@given(
    st.floats(0.1, 5.0), st.floats(-2.0, 2.0), st.floats(-5.0, 5.0),
    st.integers(1, 10_000), st.integers(1, 10_000),
)
def test_layer_couplings_single_input_closed_form(K, G1, V, n_prev, n_this):
    c = layer_action_couplings([[K]], [[G1]], [[[[V]]]], n_prev, n_this)
    g = 1 / K + (-G1 / K**2 + (n_this / 2 + 1) * V / K**3) / n_prev
    assert math.isclose(c.g[0, 0], g, rel_tol=1e-12, abs_tol=1e-12 * (1 / K + abs(V) / K**3 * (1 + n_this / n_prev)))
    assert math.isclose(c.v[0, 0, 0, 0], V / (n_prev * K**4), rel_tol=1e-12, abs_tol=1e-300)


@relaxed
@given(psd_matrices(max_size=3, jitter=(0.2, 1.0)), st.data(), st.integers(1, 1000), st.integers(1, 50))
def test_layer_couplings_symmetries_and_width_dependence(K, data, n_prev, n_this):
    P = K.shape[0]
    w = data.draw(hnp.arrays(float, (P, P), elements=entries))
    w = w + w.T
    V = np.einsum("ab,cd->abcd", w, w)
    G1 = np.zeros((P, P))
    c1 = layer_action_couplings(K, G1, V, n_prev, n_this)
    c2 = layer_action_couplings(K, G1, V, n_prev, n_this + 1)
    assert np.array_equal(c1.g, c1.g.T)
    for perm in [(1, 0, 2, 3), (0, 1, 3, 2), (2, 3, 0, 1)]:
        np.testing.assert_allclose(c1.v, c1.v.transpose(perm), rtol=1e-12, atol=1e-14 * float(np.abs(c1.v).max()))
    np.testing.assert_array_equal(c1.v, c2.v)
    # Each extra neuron kept adds (1/2n_{ℓ−1}) Σ K_{β1β2} V^{(α1α2)(β1β2)} to g.
    Kinv = np.linalg.inv(K)
    V_up = contract_all(V, Kinv)
    step = np.tensordot(V_up, K, axes=([2, 3], [0, 1])) / (2 * n_prev)
    np.testing.assert_allclose(c2.g - c1.g, step, rtol=1e-7, atol=1e-9 * (1 + float(np.abs(step).max())))
