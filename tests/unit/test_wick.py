"""Unit tests of pdlt.wick against independent references.

References: numerical integration (scipy.integrate.quad in 1-D, tensor-product Gauss–Hermite
with the Cholesky transform in 2–4 D), closed-form cumulants of non-Gaussian distributions, the
exact second-order term of the ε-expansion, and a seeded Monte Carlo as a sanity check only.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.integrate
from numpy.polynomial.hermite_e import hermegauss

from pdlt.errors import ParameterError
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

K2D = np.array([[1.3, -0.4], [-0.4, 0.8]])


def double_factorial(n: int) -> int:
    return math.prod(range(n, 0, -2)) if n > 0 else 1


def gauss_hermite(K: np.ndarray, nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Tensor-product Gauss–Hermite rule for N(0, K): points z = L x (K = L Lᵀ) and weights."""
    x, w = hermegauss(nodes)
    w = w / math.sqrt(2 * math.pi)
    d = K.shape[0]
    X = np.array(list(itertools.product(x, repeat=d)))
    W = np.prod(np.array(list(itertools.product(w, repeat=d))), axis=1)
    return X @ np.linalg.cholesky(K).T, W


def quadrature_moments(Z: np.ndarray, W: np.ndarray, order: int) -> np.ndarray:
    letters = "abcdefgh"[:order]
    spec = "m," + ",".join(f"m{c}" for c in letters) + "->" + letters
    return np.einsum(spec, W, *([Z] * order), optimize=True)


def random_psd(rng, n: int, jitter: float = 0.3) -> np.ndarray:
    A = rng.normal(size=(n, n))
    return A @ A.T / n + jitter * np.eye(n)


# --------------------------------------------------------------------------------- pairings
@pytest.mark.parametrize("m", range(7))
def test_number_of_pairings_is_double_factorial(m):
    matchings = list(pairings(range(2 * m)))
    assert len(matchings) == double_factorial(2 * m - 1)
    assert len(set(matchings)) == len(matchings)
    for matching in matchings:
        assert sorted(itertools.chain.from_iterable(matching)) == list(range(2 * m))
        assert all(a < b for a, b in matching)


@pytest.mark.parametrize("k", [1, 3, 5, 7])
def test_odd_sequences_have_no_pairings(k):
    assert list(pairings(range(k))) == []


def test_pairings_pair_positions_not_values():
    assert len(list(pairings((0, 0, 0, 0)))) == 3


# ----------------------------------------------------------------------------- Wick moments
@pytest.mark.parametrize("k", range(9))
def test_moments_1d_match_scipy_quad(k):
    K = 1.7
    density = lambda z: z**k * math.exp(-z * z / (2 * K)) / math.sqrt(2 * math.pi * K)
    reference, _ = scipy.integrate.quad(density, -np.inf, np.inf, epsabs=1e-13, epsrel=1e-13)
    assert gaussian_moment((0,) * k, [[K]]) == pytest.approx(reference, rel=1e-10, abs=1e-12)
    assert float(gaussian_moment_tensor([[K]], k).reshape(-1)[0]) == pytest.approx(reference, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("order", [2, 4, 6])
def test_moment_tensor_2d_matches_gauss_hermite(order):
    # 20 nodes integrate polynomials of degree <= 39 exactly: the reference is exact to rounding.
    Z, W = gauss_hermite(K2D, 20)
    reference = quadrature_moments(Z, W, order)
    np.testing.assert_allclose(gaussian_moment_tensor(K2D, order), reference, rtol=1e-11, atol=1e-12)


def test_moments_3d_match_gauss_hermite():
    K = random_psd(np.random.default_rng(3), 3)
    Z, W = gauss_hermite(K, 8)
    for order in (2, 4, 6):
        reference = quadrature_moments(Z, W, order)
        np.testing.assert_allclose(gaussian_moment_tensor(K, order), reference, rtol=1e-11, atol=1e-12)
    for idx in [(0, 1, 2, 2), (0, 0, 1, 1, 2, 2), (2, 2, 2, 2, 2, 2), (0, 1, 2, 0, 1, 2)]:
        reference = np.einsum("m,m->", W, np.prod(Z[:, idx], axis=1))
        assert gaussian_moment(idx, K) == pytest.approx(reference, rel=1e-11)


@pytest.mark.parametrize("idx", [(0, 1), (0, 1, 2, 3), (0, 0, 1, 2, 3, 3), (0, 1, 2, 3, 0, 1, 2, 3), (3,) * 8])
def test_memoised_recursion_equals_explicit_pairing_sum(idx):
    K = random_psd(np.random.default_rng(5), 4)
    explicit = sum(math.prod(K[a, b] for a, b in matching) for matching in pairings(idx))
    assert gaussian_moment(idx, K) == pytest.approx(explicit, rel=1e-13)


def test_odd_and_empty_moments():
    assert gaussian_moment((0, 1, 1), K2D) == 0.0
    assert gaussian_moment((), K2D) == 1.0
    assert not np.any(gaussian_moment_tensor(K2D, 3))
    assert gaussian_moment_tensor(K2D, 0) == 1.0


def test_monte_carlo_sanity_check():
    """Seeded MC, tolerance 5 standard errors: a sanity check, not the reference."""
    rng = np.random.default_rng(20240611)
    K = random_psd(np.random.default_rng(7), 3)
    z = rng.multivariate_normal(np.zeros(3), K, size=200_000)
    for idx in [(0, 1), (0, 1, 2, 2), (0, 0, 1, 1), (0, 1, 1, 2, 2, 2)]:
        samples = np.prod(z[:, idx], axis=1)
        se = samples.std(ddof=1) / math.sqrt(samples.size)
        assert abs(samples.mean() - gaussian_moment(idx, K)) < 5 * se


# --------------------------------------------------------------------- cumulants of Gaussians
def test_connected_correlators_of_gaussian_vanish():
    K = random_psd(np.random.default_rng(11), 3)
    M2, M4, M6 = (gaussian_moment_tensor(K, k) for k in (2, 4, 6))
    assert np.abs(connected_four_point(M2, M4)).max() < 1e-12
    assert np.abs(connected_six_point(M2, M4, M6)).max() < 1e-12
    np.testing.assert_allclose(full_four_point(K, np.zeros_like(M4)), M4, rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(full_six_point(K, np.zeros_like(M4), np.zeros_like(M6)), M6, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("idx", [(0, 1), (0, 1, 2), (0, 1, 2, 2), (0, 0, 1, 2, 2), (0, 1, 1, 2, 2, 2)])
def test_set_partition_cumulants_of_gaussian(idx):
    K = random_psd(np.random.default_rng(13), 3)
    kappa = cumulants_from_moments(lambda sub: gaussian_moment(sub, K), idx)
    expected = K[idx] if len(idx) == 2 else 0.0
    assert kappa == pytest.approx(expected, abs=1e-12)


# ----------------------------------------------------------- cumulants of non-Gaussian laws
def independent_moment(counts: dict[int, int], source_moments: list[list[float]]) -> float:
    return math.prod(source_moments[a][c] for a, c in counts.items())


def linear_mixture_moment(A: np.ndarray, idx: tuple[int, ...], source_moments) -> float:
    """E[Π_j z_{idx_j}] for z = A u with independent u_a, by brute-force expansion (tests only)."""
    total = 0.0
    for assignment in itertools.product(range(A.shape[1]), repeat=len(idx)):
        coef = math.prod(A[i, a] for i, a in zip(idx, assignment))
        counts: dict[int, int] = {}
        for a in assignment:
            counts[a] = counts.get(a, 0) + 1
        total += coef * independent_moment(counts, source_moments)
    return total


def test_uniform_mixture_cumulant_tensors_match_closed_form():
    # u uniform on [-√3, √3]: E u^{2k} = 3^k/(2k+1); κ4 = -6/5, κ6 = 48/7.  Cumulants of z = A u
    # are multilinear: κ(z_{i1}, …) = Σ_a A_{i1 a} ⋯ κ_k(u_a).
    moments = [1.0, 0.0, 1.0, 0.0, 9 / 5, 0.0, 27 / 7]
    A = np.array([[1.0, 0.5, -0.3], [0.2, -1.1, 0.7]])
    sources = [moments] * 3
    N = A.shape[0]
    M = {
        k: np.array([linear_mixture_moment(A, idx, sources) for idx in itertools.product(range(N), repeat=k)]).reshape((N,) * k)
        for k in (2, 4, 6)
    }
    C4_exact = -6 / 5 * np.einsum("ia,ja,ka,la->ijkl", A, A, A, A)
    C6_exact = 48 / 7 * np.einsum("ia,ja,ka,la,ma,na->ijklmn", A, A, A, A, A, A)
    np.testing.assert_allclose(connected_four_point(M[2], M[4]), C4_exact, atol=1e-12)
    np.testing.assert_allclose(connected_six_point(M[2], M[4], M[6]), C6_exact, atol=1e-11)
    np.testing.assert_allclose(full_six_point(M[2], C4_exact, C6_exact), M[6], atol=1e-11)


@pytest.mark.parametrize("idx", [(0, 1), (0, 1, 1), (0, 0, 1, 1), (0, 1, 0, 1, 1), (0, 0, 0, 1, 1, 1), (1,) * 6])
def test_centred_exponential_mixture_cumulants_match_closed_form(idx):
    # X ~ Exp(1) − 1: moments are the derangement numbers 1, 0, 1, 2, 9, 44, 265 and κ_k = (k−1)!
    # for k >= 2 — a skewed law, so odd cumulants survive.
    moments = [1.0, 0.0, 1.0, 2.0, 9.0, 44.0, 265.0]
    A = np.array([[0.8, -0.5], [0.3, 1.2]])
    moment_fn = lambda sub: linear_mixture_moment(A, sub, [moments, moments])
    k = len(idx)
    exact = math.factorial(k - 1) * sum(math.prod(A[i, a] for i in idx) for a in range(2))
    assert cumulants_from_moments(moment_fn, idx) == pytest.approx(exact, rel=1e-12)
    cumulant_fn = lambda sub: math.factorial(len(sub) - 1) * sum(math.prod(A[i, a] for i in sub) for a in range(2)) if len(sub) > 1 else 0.0
    assert moments_from_cumulants(cumulant_fn, idx) == pytest.approx(moment_fn(idx), rel=1e-12)


@pytest.mark.parametrize("k", range(1, 9))
def test_exponential_law_with_mean(k):
    # Exp(1): E X^k = k!, κ_k = (k−1)!; non-zero mean, so every block size enters.
    assert cumulants_from_moments(lambda sub: math.factorial(len(sub)), ("x",) * k) == pytest.approx(math.factorial(k - 1))
    assert moments_from_cumulants(lambda sub: math.factorial(len(sub) - 1), ("x",) * k) == pytest.approx(math.factorial(k))


def cubic_map_moment(K: np.ndarray, a: float, idx: tuple[int, ...]) -> float:
    """E[Π_j z_{idx_j}] for z = x + a x³ (componentwise), x ~ N(0, K), via Wick on x."""
    total = 0.0
    for cubes in itertools.product((False, True), repeat=len(idx)):
        expanded = tuple(itertools.chain.from_iterable((i,) * (3 if c else 1) for i, c in zip(idx, cubes)))
        total += a ** sum(cubes) * gaussian_moment(expanded, K)
    return total


def test_cubic_map_fourth_cumulant_closed_form():
    # x ~ N(0, 1), z = x + a x³: E z² = 1 + 6a + 15a², E z⁴ = 3 + 60a + 630a² + 3780a³ + 10395a⁴,
    # so κ4 = E z⁴ − 3(E z²)² = 24a + 432a² + 3240a³ + 9720a⁴.
    a = 0.13
    kappa4 = 24 * a + 432 * a**2 + 3240 * a**3 + 9720 * a**4
    assert cumulants_from_moments(lambda sub: cubic_map_moment(np.eye(1), a, sub), (0,) * 4) == pytest.approx(kappa4, rel=1e-13)
    M2 = np.array([[cubic_map_moment(np.eye(1), a, (0, 0))]])
    M4 = np.full((1,) * 4, cubic_map_moment(np.eye(1), a, (0,) * 4))
    assert float(connected_four_point(M2, M4).item()) == pytest.approx(kappa4, rel=1e-13)


def test_cubic_map_tensor_cumulants_agree_with_set_partitions():
    K = np.array([[1.0, 0.35], [0.35, 0.6]])
    a = -0.08
    fn = lambda sub: cubic_map_moment(K, a, sub)
    M = {k: np.array([fn(i) for i in itertools.product(range(2), repeat=k)]).reshape((2,) * k) for k in (2, 4, 6)}
    C4 = connected_four_point(M[2], M[4])
    C6 = connected_six_point(M[2], M[4], M[6])
    for idx in [(0, 0, 0, 0), (0, 1, 0, 1), (0, 1, 1, 1)]:
        assert C4[idx] == pytest.approx(cumulants_from_moments(fn, idx), rel=1e-12)
    for idx in [(0,) * 6, (0, 1, 0, 1, 1, 1), (0, 0, 0, 1, 1, 1)]:
        assert C6[idx] == pytest.approx(cumulants_from_moments(fn, idx), rel=1e-11)
    assert np.abs(C4).max() > 1e-2  # genuinely non-Gaussian
    np.testing.assert_allclose(full_four_point(M[2], C4), M[4], rtol=1e-13)
    np.testing.assert_allclose(full_six_point(M[2], C4, C6), M[6], rtol=1e-12)


# ---------------------------------------------------------------------------- quartic action
def second_order_coefficients_1d(K: float, V: float) -> tuple[float, float]:
    """Exact ε² coefficients of E[z²] and E[z⁴]|_c for S = z²/2K + εVz⁴/24.

    E_ε[O] = Σ_k (−ε)^k/k! κ(O, u, …, u) with u = Vz⁴/24 (cumulant expansion of the log of the
    tilted generating function), so the ε² term of E[O] is ½ κ(O, u, u).
    """
    def moment(sub):  # labels are (coefficient, power) of monomials in z
        p = sum(power for _, power in sub)
        return math.prod(c for c, _ in sub) * (double_factorial(p - 1) * K ** (p // 2) if p % 2 == 0 else 0.0)

    O2, O4, u = (1.0, 2), (1.0, 4), (V / 24, 4)
    k2uu = cumulants_from_moments(moment, (O2, u, u))
    k4uu = cumulants_from_moments(moment, (O4, u, u))
    k2u = cumulants_from_moments(moment, (O2, u))
    return 0.5 * k2uu, 0.5 * k4uu - 3 * k2u**2 - 3 * K * k2uu


def quartic_quadrature_1d(K: float, V: float, eps: float) -> tuple[float, float]:
    weight = lambda z: math.exp(-z * z / (2 * K) - eps * V * z**4 / 24)
    lim = 14 * math.sqrt(K)
    Z, E2, E4 = (scipy.integrate.quad(lambda z, p=p: z**p * weight(z), -lim, lim, epsabs=0, epsrel=1e-13, limit=200)[0] for p in (0, 2, 4))
    return E2 / Z, E4 / Z - 3 * (E2 / Z) ** 2


def test_quartic_action_1d_against_quadrature():
    K, V = 1.3, 0.7
    devs = []
    for eps in (4e-3, 2e-3, 1e-3):
        two, four = quartic_action_correlators([[K]], [[[[V]]]], eps)
        E2, C4 = quartic_quadrature_1d(K, V, eps)
        assert C4 < 0  # positive quartic coupling → negative connected four-point function
        devs.append((E2 - two[0, 0], C4 - four[0, 0, 0, 0], eps))
    c2, c4 = second_order_coefficients_1d(K, V)
    for (d2, d4, eps), (d2h, d4h, _) in zip(devs, devs[1:]):
        assert d2 / d2h == pytest.approx(4, rel=0.05)
        assert d4 / d4h == pytest.approx(4, rel=0.05)
    d2, d4, eps = devs[-1]
    assert d2 / eps**2 == pytest.approx(c2, rel=0.02)
    assert d4 / eps**2 == pytest.approx(c4, rel=0.02)
    # First-order values themselves: (1.74) and (1.78) in one dimension.
    two, four = quartic_action_correlators([[K]], [[[[V]]]], 1e-3)
    assert two[0, 0] == pytest.approx(K - 1e-3 * V * K**3 / 2)
    assert four[0, 0, 0, 0] == pytest.approx(-1e-3 * V * K**4)


def positive_quartic_2d() -> np.ndarray:
    # Σ c_r (u_r·z)⁴ + (z·z)² is a positive quartic form, so exp(−S) is integrable.
    us = [np.array([1.0, 0.3]), np.array([-0.4, 1.0]), np.array([0.7, 0.7])]
    V = sum(c * np.einsum("a,b,c,d->abcd", u, u, u, u) for c, u in zip((1.0, 0.5, 0.8), us))
    return V + symmetrize(np.einsum("ab,cd->abcd", np.eye(2), np.eye(2)))


def test_quartic_action_2d_against_gauss_hermite():
    V = positive_quartic_2d()
    Z, W = gauss_hermite(K2D, 40)
    quartic = np.einsum("abcd,ma,mb,mc,md->m", V, Z, Z, Z, Z) / 24
    devs = []
    for eps in (4e-3, 2e-3, 1e-3):
        w = W * np.exp(-eps * quartic)
        w /= w.sum()
        E2 = quadrature_moments(Z, w, 2)
        C4 = connected_four_point(E2, quadrature_moments(Z, w, 4))
        assert C4[0, 0, 0, 0] < 0 and C4[1, 1, 1, 1] < 0
        two, four = quartic_action_correlators(K2D, V, eps)
        devs.append((np.abs(E2 - two).max(), np.abs(C4 - four).max()))
        # First order really is first order: the correction dominates the residual.
        assert np.abs(E2 - two).max() < 0.1 * np.abs(two - K2D).max()
    for (d2, d4), (d2h, d4h) in zip(devs, devs[1:]):
        assert d2 / d2h == pytest.approx(4, rel=0.1)
        assert d4 / d4h == pytest.approx(4, rel=0.1)


def test_quartic_coupling_round_trip():
    V = positive_quartic_2d()
    C4 = quartic_action_correlators(K2D, V, 0.01).connected_four_point
    np.testing.assert_allclose(quartic_coupling_from_connected(K2D, C4, eps=0.01), V, rtol=1e-12)
    np.testing.assert_allclose(quartic_coupling_from_connected(K2D, C4), 0.01 * V, rtol=1e-12)


# ------------------------------------------------------------------------ layer-ℓ action
def pair_vertex(rng, P: int, scale: float) -> np.ndarray:
    """V_{(α1α2)(α3α4)} = scale Σ_r w_r ⊗ w_r with symmetric w_r: pair and exchange symmetric."""
    ws = [(lambda B: B + B.T)(rng.normal(size=(P, P))) for _ in range(2)]
    return scale * sum(np.einsum("ab,cd->abcd", w, w) for w in ws)


def combined_pairing_sum(T: np.ndarray, n: int) -> np.ndarray:
    """δ_{i1i2}δ_{i3i4} T_{(α1α2)(α3α4)} + 2 pairings, over the combined index μ = (i, α)."""
    P = T.shape[0]
    d = np.eye(n)
    X = np.einsum("ij,kl,abcd->iajbkcld", d, d, T).reshape((n * P,) * 4)
    return X + X.transpose(0, 2, 1, 3) + X.transpose(0, 3, 2, 1)


def test_layer_couplings_single_input_reduction():
    K, G1, V, n_prev, n_this = 1.7, -0.4, 2.3, 50, 7
    c = layer_action_couplings([[K]], [[G1]], [[[[V]]]], n_prev, n_this)
    assert c.g[0, 0] == pytest.approx(1 / K + (-G1 / K**2 + (n_this / 2 + 1) * V / K**3) / n_prev, rel=1e-14)
    assert c.v[0, 0, 0, 0] == pytest.approx(V / (n_prev * K**4), rel=1e-14)


def layer_setup(P: int, seed: int):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(P, P))
    K = 0.5 * A @ A.T + np.eye(P)
    G1 = (lambda B: B + B.T)(rng.normal(size=(P, P)))
    # A negative vertex keeps the action bounded below (+⅛ v zzzz ≤ 0), so exp(−S) is integrable
    # and quadrature converges; the first-order formulas are linear in V, so its sign is immaterial.
    return K, G1, pair_vertex(rng, P, -0.3)


@pytest.mark.parametrize("P, n_this", [(2, 1), (3, 2)])
def test_layer_couplings_reproduce_correlators_at_first_order(P, n_this):
    """Algebraic check through (1.74)/(1.78) over the combined index; residual is O(1/n²)."""
    K, G1, V = layer_setup(P, 17)
    residuals = []
    for n_prev in (1e2, 1e3, 1e4):
        c = layer_action_couplings(K, G1, V, n_prev, n_this)
        covariance = np.kron(np.eye(n_this), np.linalg.inv(c.g))
        two, four = quartic_action_correlators(covariance, -combined_pairing_sum(c.v, n_this), 1.0)
        r2 = np.abs(two - np.kron(np.eye(n_this), K + G1 / n_prev)).max()
        r4 = np.abs(four - combined_pairing_sum(V, n_this) / n_prev).max()
        residuals.append(max(r2, r4) * n_prev**2)
    # residual × n² converges: the O(1/n) terms cancel exactly.
    assert residuals[2] == pytest.approx(residuals[1], rel=0.05)


def layer_quadrature_residuals(K, G1, V, n_this, nodes, couplings=layer_action_couplings):
    P = K.shape[0]
    out = []
    for n_prev in (400, 800, 1600):
        g, v = couplings(K, G1, V, n_prev, n_this)
        Z, W = gauss_hermite(np.kron(np.eye(n_this), np.linalg.inv(g)), nodes)
        Zr = Z.reshape(-1, n_this, P)
        Q = np.einsum("mia,mib->mab", Zr, Zr)
        w = W * np.exp(np.einsum("abcd,mab,mcd->m", v, Q, Q) / 8)
        w /= w.sum()
        E2 = quadrature_moments(Z, w, 2)
        C4 = connected_four_point(E2, quadrature_moments(Z, w, 4))
        r2 = np.abs(E2 - np.kron(np.eye(n_this), K + G1 / n_prev)).max()
        r4 = np.abs(C4 - combined_pairing_sum(V, n_this) / n_prev).max()
        out.append((r2, r4))
    return out


@pytest.mark.parametrize("P, n_this, nodes", [(2, 1, 40), (1, 2, 40), (2, 2, 14)])
def test_layer_couplings_against_quadrature(P, n_this, nodes):
    """Integrate exp(−S) of the layer action directly: E[zz] − (K + G1/n) and the connected
    four-point residual shrink ∝ 1/n² (ratio 4 per doubling of n_{ℓ−1}).  The (2, 1) and (2, 2)
    cases exercise the multi-input cross term Σ K V^{(α1β1)(α2β2)} of g."""
    K, G1, V = layer_setup(P, 23)
    res = layer_quadrature_residuals(K, G1, V, n_this, nodes)
    for (a2, a4), (b2, b4) in zip(res, res[1:]):
        assert a2 / b2 == pytest.approx(4, rel=0.1)
        assert a4 / b4 == pytest.approx(4, rel=0.1)


def test_layer_quadrature_detects_a_missing_cross_term():
    """Negative control: dropping Σ K V^{(α1β1)(α2β2)} from g leaves an O(1/n) residual."""
    K, G1, V = layer_setup(2, 23)

    def without_cross(K, G1, V, n_prev, n_this):
        c = layer_action_couplings(K, G1, V, n_prev, n_this)
        Kinv = np.linalg.inv(K)
        V_up = np.einsum("ai,bj,ck,dl,ijkl->abcd", Kinv, Kinv, Kinv, Kinv, V)
        return c.g - np.einsum("bd,abcd->ac", K, V_up) / n_prev, c.v

    res = layer_quadrature_residuals(K, G1, V, 1, 40, couplings=without_cross)
    assert res[1][0] / res[2][0] == pytest.approx(2, rel=0.1)


# -------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "K, fragment",
    [
        ([[1.0, 0.2], [0.3, 1.0]], "symmetric positive semi-definite"),
        ([[1.0, 2.0], [2.0, 1.0]], "smallest eigenvalue -1"),
        ([[1.0, 0.0]], "square"),
        ([[np.nan]], "finite"),
    ],
)
def test_invalid_covariance_is_rejected(K, fragment):
    with pytest.raises(ParameterError, match=fragment) as info:
        gaussian_moment((0, 0), K)
    assert str(info.value).startswith("The 'K' parameter of gaussian_moment must be")
    assert isinstance(info.value, ValueError)


def test_psd_message_format():
    with pytest.raises(ParameterError) as info:
        gaussian_moment_tensor([[1.0, 2.0], [2.0, 1.0]], 4)
    msg = str(info.value)
    assert msg.startswith("The 'K' parameter of gaussian_moment_tensor must be symmetric positive semi-definite. Got ")
    assert " instead." in msg


def test_singular_but_psd_covariance_is_accepted():
    K = np.array([[1.0, 1.0], [1.0, 1.0]])  # z0 = z1
    assert gaussian_moment((0, 1, 0, 1), K) == pytest.approx(3.0)


def test_invalid_arguments_are_rejected():
    with pytest.raises(ParameterError, match="indices"):
        gaussian_moment((0, 2), K2D)
    with pytest.raises(ParameterError, match="indices"):
        gaussian_moment((0, -1), K2D)
    with pytest.raises(ParameterError, match="order"):
        gaussian_moment_tensor(K2D, -2)
    with pytest.raises(ParameterError, match=r"shape \(2, 2, 2, 2\)"):
        connected_four_point(K2D, np.zeros((3,) * 4))
    with pytest.raises(ParameterError, match="fully symmetric"):
        quartic_action_correlators(K2D, np.arange(16.0).reshape((2,) * 4), 0.1)
    with pytest.raises(ParameterError, match="positive definite"):
        quartic_coupling_from_connected(np.ones((2, 2)), np.zeros((2,) * 4))
    with pytest.raises(ParameterError, match="eps"):
        quartic_coupling_from_connected(K2D, np.zeros((2,) * 4), eps=0.0)
    with pytest.raises(ParameterError, match="n_prev"):
        layer_action_couplings(K2D, np.zeros((2, 2)), np.zeros((2,) * 4), 0, 3)
    with pytest.raises(ParameterError, match="exchange"):
        layer_action_couplings(K2D, np.zeros((2, 2)), np.arange(16.0).reshape((2,) * 4), 10, 3)
    with pytest.raises(ParameterError, match="length 1 to 8"):
        cumulants_from_moments(lambda sub: 0.0, ())
