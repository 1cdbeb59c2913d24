"""Accuracy of the Gaussian expectation engine against independent references.

References: closed forms that hold in any dimension (products of sin via ⟨cos wᵀz⟩ =
exp(−½ wᵀKw); products of exp via the moment generating function; orthant probabilities of
ReLU derivatives in 3-D), mpmath quadrature at 30 digits in 1-D and 2-D, and the arc-cosine
kernels.  Targets (design.md §4): relative error ≤ 1e-10 for smooth σ in 1–2 dimensions,
≤ 1e-8 for kinked σ in 1–2 dimensions, ≤ 1e-6 in 3–4 dimensions.
"""

import itertools
import math

import mpmath as mp
import numpy as np
import pytest

import pdlt
from pdlt.gaussian import QuadratureRule, expect, quadrature


def rand_cov(k, scale, rng):
    A = rng.normal(size=(k, k))
    C = A @ A.T + 0.3 * np.eye(k)
    d = np.sqrt(np.diag(C))
    C = C / np.outer(d, d)
    s = scale * np.exp(rng.uniform(-0.5, 0.5, k))
    return C * np.outer(s, s)


def sin_reference(orders, K):
    """⟨Π_s sin^(d_s)(z_s)⟩ exactly: sin^(d)(z) = sin(z + dπ/2) = Im e^{i(z + dπ/2)}."""
    k = len(orders)
    phi = np.array(orders) * np.pi / 2
    total = 0j
    for eps in itertools.product((1, -1), repeat=k):
        e = np.array(eps)
        total += np.prod(e) * np.exp(1j * e @ phi) * np.exp(-0.5 * e @ K @ e)
    return (total / (2j) ** k).real


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("scale", [0.3, 1.0, 2.0])
def test_smooth_1d_2d_sin_exact(k, scale):
    rng = np.random.default_rng(k * 10 + int(scale * 10))
    act = pdlt.activation("sin")
    for _ in range(3):
        K = rand_cov(k, scale, rng)
        for orders in [(0,) * k, (1,) * k, tuple(rng.integers(0, 5, k))]:
            ref = sin_reference(orders, K)
            v, err = expect(act, orders, K)
            assert abs(v - ref) <= 1e-10 * max(abs(ref), 0.05), (orders, v, ref)  # 0.05: the integrand is O(1); tiny values come from cancellation


@pytest.mark.parametrize("k", [3, 4])
@pytest.mark.parametrize("scale", [0.3, 1.0, 2.0])
def test_smooth_3d_4d_sin_exact(k, scale):
    rng = np.random.default_rng(k * 100 + int(scale * 10))
    act = pdlt.activation("sin")
    K = rand_cov(k, scale, rng)
    for orders in [(0,) * k, (1,) * k, tuple(rng.integers(0, 4, k))]:
        ref = sin_reference(orders, K)
        v, err = expect(act, orders, K)
        assert abs(v - ref) <= 1e-6 * max(abs(ref), 1e-2), (orders, v, ref)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_exponential_moment_generating_function(k):
    rng = np.random.default_rng(7 + k)
    act = pdlt.activation("exponential")
    K = rand_cov(k, 0.7, rng)
    ref = math.exp(0.5 * K.sum())
    v, _ = expect(act, (0,) * k, K)
    tol = 1e-10 if k <= 2 else 1e-6
    assert abs(v - ref) <= tol * ref


@pytest.mark.parametrize("K", [0.05, 0.7, 4.0, 30.0])
def test_tanh_1d_mpmath(K):
    mp.mp.dps = 30
    act = pdlt.activation("tanh")
    s = mp.sqrt(K)
    for orders, f in [((0, 0), lambda u: mp.tanh(s * u) ** 2), ((1, 1), lambda u: mp.sech(s * u) ** 4)]:
        ref = mp.quad(lambda u: f(u) * mp.npdf(u), [-mp.inf, -1, 0, 1, mp.inf])
        v, _ = expect(act, orders, np.full((2, 2), K))
        assert abs(v - float(ref)) <= 1e-10 * float(ref)


def test_tanh_2d_scipy_dblquad():
    from scipy import integrate

    act = pdlt.activation("tanh")
    K = np.array([[1.3, 0.7], [0.7, 0.9]])
    L = np.linalg.cholesky(K)
    derivs = {
        0: np.tanh,
        1: lambda z: 1 - np.tanh(z) ** 2,
        2: lambda z: -2 * np.tanh(z) * (1 - np.tanh(z) ** 2),
        3: lambda z: (1 - np.tanh(z) ** 2) * (6 * np.tanh(z) ** 2 - 2),
    }
    phi = lambda u: np.exp(-0.5 * u * u) / math.sqrt(2 * math.pi)
    for orders in [(0, 0), (1, 1), (2, 0), (3, 1)]:
        f0, f1 = derivs[orders[0]], derivs[orders[1]]
        ref, abserr = integrate.dblquad(
            lambda b, a: f0(L[0, 0] * a) * f1(L[1, 0] * a + L[1, 1] * b) * phi(a) * phi(b),
            -9, 9, -9, 9, epsabs=1e-14, epsrel=1e-13,
        )
        v, _ = expect(act, orders, K)
        assert abs(v - ref) <= 1e-10 * max(abs(ref), 0.05) + abserr, orders


def arccos_kernels(K):
    s = math.sqrt(K[0, 0] * K[1, 1])
    c = np.clip(K[0, 1] / s, -1, 1)
    psi = math.acos(c)
    return s / (2 * math.pi) * (math.sin(psi) + (math.pi - psi) * c), (math.pi - psi) / (2 * math.pi)


@pytest.mark.parametrize("rho", [-0.9, -0.2, 0.0, 0.5, 0.999, 1.0])
def test_relu_closed_form_and_quadrature(rho):
    act = pdlt.activation("relu")
    K = np.array([[1.7, rho * math.sqrt(1.7 * 0.6)], [rho * math.sqrt(1.7 * 0.6), 0.6]])
    k00, k11 = arccos_kernels(K)
    for orders, ref in [((0, 0), k00), ((1, 1), k11)]:
        closed, err = expect(act, orders, K, method="closed")
        assert err == 0 and abs(closed - ref) <= 1e-13
        quad, qerr = expect(act, orders, K, method="quadrature")
        assert abs(quad - ref) <= 1e-8 * ref


def test_relu_delta_insertions_2d():
    # ⟨σ''(z1) σ(z2)⟩ = ⟨δ(z1) relu(z2)⟩ = p1(0) E[relu(z2) | z1 = 0]
    act = pdlt.activation("relu")
    K = np.array([[1.3, 0.7], [0.7, 0.9]])
    cond_var = 0.9 - 0.7**2 / 1.3
    ref = (1 / math.sqrt(2 * math.pi * 1.3)) * math.sqrt(cond_var) / math.sqrt(2 * math.pi)
    v, _ = expect(act, (2, 0), K)
    assert abs(v - ref) <= 1e-8 * ref
    # ⟨σ''(z1) σ'(z2)⟩ = p1(0) P(z2 > 0 | z1 = 0) = p1(0)/2
    v, _ = expect(act, (2, 1), K)
    assert abs(v - 0.5 / math.sqrt(2 * math.pi * 1.3)) <= 1e-8


def test_relu_3d_orthant_probability():
    rng = np.random.default_rng(3)
    act = pdlt.activation("relu")
    for _ in range(4):
        K = rand_cov(3, 1.0, rng)
        d = np.sqrt(np.diag(K))
        R = K / np.outer(d, d)
        ref = 1 / 8 + (math.asin(R[0, 1]) + math.asin(R[0, 2]) + math.asin(R[1, 2])) / (4 * math.pi)
        v, _ = expect(act, (1, 1, 1), K)
        assert abs(v - ref) <= 1e-6 * ref


def test_degenerate_blocks_coinciding_inputs():
    act = pdlt.activation("tanh")
    K1 = 0.8
    # all four slots on one variable: ⟨tanh⁴⟩ (1-D)
    K = np.full((4, 4), K1)
    v4, _ = expect(act, (0, 0, 0, 0), K)
    v1, _ = expect(act, (0, 0), np.full((2, 2), K1))
    mp.mp.dps = 25
    ref4 = mp.quad(lambda u: mp.tanh(mp.sqrt(K1) * u) ** 4 * mp.npdf(u), [-mp.inf, 0, mp.inf])
    assert abs(v4 - float(ref4)) <= 1e-10 * float(ref4)
    # two coinciding pairs: ⟨σ(z1)² σ(z2)²⟩ equals the 2-D expectation of the squared products
    K2 = np.array([[1.0, 0.4], [0.4, 0.7]])
    idx = [0, 0, 1, 1]
    v, _ = expect(act, (0, 0, 0, 0), K2[np.ix_(idx, idx)])
    assert np.isfinite(v) and v > 0
    assert v1 > 0


def test_linear_wick_exact():
    act = pdlt.activation("linear")
    rng = np.random.default_rng(1)
    K = rand_cov(4, 1.0, rng)
    v, err = expect(act, (0, 0, 0, 0), K)
    ref = K[0, 1] * K[2, 3] + K[0, 2] * K[1, 3] + K[0, 3] * K[1, 2]
    assert err == 0 and abs(v - ref) <= 1e-14 * abs(ref)
    assert expect(act, (0, 1, 0, 1), K)[0] == pytest.approx(K[0, 2], rel=1e-14)


def test_erf_closed_forms_match_quadrature():
    act = pdlt.activation("erf")
    K = np.array([[1.1, 0.3], [0.3, 0.5]])
    for orders in [(0, 0), (1, 1)]:
        c, _ = expect(act, orders, K, method="closed")
        q, _ = expect(act, orders, K, method="quadrature")
        assert abs(c - q) <= 1e-10 * abs(c)


def test_hermite_insertion_equals_derivative_for_smooth_sigma():
    act = pdlt.activation("gelu")
    K = np.array([[1.2, 0.5], [0.5, 0.8]])
    # ⟨∂1∂2 (σσ)⟩ = ⟨σ'σ'⟩ and ⟨∂1² (σσ)⟩ = ⟨σ''σ⟩
    a, _ = expect(act, (0, 0), K, insert=(1, 1))
    b, _ = expect(act, (1, 1), K)
    assert abs(a - b) <= 1e-10 * abs(b)
    a, _ = expect(act, (0, 0), K, insert=(2, 0))
    b, _ = expect(act, (2, 0), K)
    assert abs(a - b) <= 1e-10 * max(abs(b), 1e-2)
    # on a coinciding pair the insertion is the derivative of the whole product: (σ²)'' = 2σ'² + 2σσ''
    Kc = np.full((2, 2), 0.9)
    a, _ = expect(act, (0, 0), Kc, insert=(2, 0))
    b = 2 * expect(act, (1, 1), Kc)[0] + 2 * expect(act, (2, 0), Kc)[0]
    assert abs(a - b) <= 1e-10 * abs(b)


def test_undefined_distribution_products_raise():
    act = pdlt.activation("relu")
    with pytest.raises(pdlt.NumericalError, match="distributions"):
        expect(act, (2, 2), np.full((2, 2), 1.0))


def test_error_estimates_are_conservative():
    rng = np.random.default_rng(5)
    act = pdlt.activation("sin")
    for k in (2, 3):
        K = rand_cov(k, 1.5, rng)
        v, err = quadrature(act, (0,) * k, K[None], rule=QuadratureRule({2: 6, 3: 6}))
        assert abs(v[0] - sin_reference((0,) * k, K)) <= err[0] + 1e-15


def test_batch_matches_single_blocks():
    rng = np.random.default_rng(9)
    act = pdlt.activation("tanh")
    Ks = np.stack([rand_cov(2, 1.0, rng) for _ in range(5)])
    v, _ = expect(act, (1, 0), Ks)
    for i in range(5):
        assert v[i] == pytest.approx(expect(act, (1, 0), Ks[i])[0], rel=1e-14)


@pytest.mark.parametrize(
    "K, match",
    [
        (np.array([[1.0, 2.0], [2.0, 1.0]]), "positive semi-definite"),
        (np.array([[1.0, 0.2], [0.3, 1.0]]), "symmetric"),
        (np.array([[np.nan, 0.0], [0.0, 1.0]]), "finite"),
        (np.ones((3, 3)), "k = 2"),
    ],
)
def test_bad_blocks_rejected(K, match):
    with pytest.raises(pdlt.ParameterError, match=match):
        expect(pdlt.activation("tanh"), (0, 0), K)


def test_bad_orders_rejected():
    with pytest.raises(pdlt.ParameterError, match="orders"):
        expect(pdlt.activation("tanh"), (0, 0, 0, 0, 0), np.eye(5))
    with pytest.raises(pdlt.ParameterError, match="method"):
        expect(pdlt.activation("tanh"), (0,), np.eye(1), method="magic")


def test_pair_matrix_coinciding_pairs_small_variance():
    # regression: the Mehler pair matrix was off by ~1e-5 on coinciding pairs at small variance
    from pdlt.gaussian import pair_matrix

    act = pdlt.activation("gelu")
    K = np.array([[0.01, 0.005, 0.002], [0.005, 0.012, 0.001], [0.002, 0.001, 0.009]])
    for d1, d2 in [(0, 0), (1, 1), (2, 0)]:
        v, _ = pair_matrix(act, d1, d2, K)
        for i in range(3):
            ref, _ = expect(act, (d1, d2), np.full((2, 2), K[i, i]), method="quadrature")
            assert abs(v[i, i] - ref) <= 1e-10 * max(abs(ref), 1e-3)
        off, _ = expect(act, (d1, d2), K[np.ix_([0, 1], [0, 1])], method="quadrature")
        assert abs(v[0, 1] - off) <= 1e-10 * max(abs(off), 1e-3)


# ----------------------------------------------------------------------- pair-matrix closed forms
def _awkward_kernel(N, rng, c_b=0.0):
    """A ReLU-style first-layer kernel with duplicated, near-duplicated, collinear and zero inputs."""
    X = rng.normal(size=(N, 5))
    X[3] = X[1]  # duplicate
    X[4] = X[1] * (1 + 1e-15)  # coincides within rounding
    X[5] = 2.5 * X[2]  # collinear, not coinciding
    X[6] = 0.0  # zero variance when c_b = 0
    X[N - 1] = X[0]  # duplicate across tiles
    return c_b + 1.7 * (X @ X.T) / 5  # X @ X.T is exactly symmetric (one BLAS syrk)


@pytest.mark.parametrize("N", [40, 300])
@pytest.mark.parametrize(
    "name, kwargs, orders",
    [
        ("relu", {}, [(0, 0), (1, 1), (0, 1), (1, 0)]),
        ("leaky_relu", {"slope": 0.2}, [(0, 0), (1, 1), (0, 1)]),
        ("scale_invariant", {"a_plus": 0.7, "a_minus": -1.3}, [(0, 0), (1, 1), (1, 0)]),
        ("linear", {}, [(0, 0), (1, 1), (0, 1), (2, 0)]),
        ("erf", {}, [(0, 0), (1, 1)]),
        ("gelu", {}, [(0, 0), (1, 1)]),
    ],
)
def test_pair_matrices_match_block_closed_forms(N, name, kwargs, orders):
    """The pair-matrix hook (every pair of one kernel, tiled when N > 192) equals the block hook
    pair by pair, to rounding, on duplicated, collinear and zero-variance inputs, and its
    symmetric patterns are exactly symmetric."""
    from pdlt.gaussian import _closed_form, _closed_pair_matrices

    act = pdlt.activation(name, **kwargs)
    K = _awkward_kernel(N, np.random.default_rng(N))
    mats = _closed_pair_matrices(act, orders, K)
    assert mats is not None and len(mats) == len(orders)
    ii, jj = (x.ravel() for x in np.indices((N, N)))
    d = np.diag(K)
    blocks = np.empty((N * N, 2, 2))
    blocks[:, 0, 0], blocks[:, 1, 1] = d[ii], d[jj]
    blocks[:, 0, 1] = blocks[:, 1, 0] = K[ii, jj]
    for o, M in zip(orders, mats):
        ref = _closed_form(act, o, blocks)[0].reshape(N, N)
        scale = np.sqrt(np.outer(d, d)) if o == (0, 0) else (np.sqrt(d)[:, None] + np.sqrt(d)[None, :] if 0 in o and o != (0, 0) else 1.0)
        err = np.abs(M - ref) / (np.maximum(scale, 1e-300) + np.abs(ref))
        assert err.max() <= 1e-13, (o, float(err.max()))
        if o[0] == o[1]:
            assert np.array_equal(M, M.T)


def test_pair_matrices_decline_what_they_cannot_answer():
    from pdlt.gaussian import _closed_pair_matrices

    K = _awkward_kernel(10, np.random.default_rng(0), c_b=0.1)
    assert _closed_pair_matrices(pdlt.activation("tanh"), [(0, 0)], K) is None  # no closed form
    assert _closed_pair_matrices(pdlt.activation("relu"), [(0, 0), (2, 0)], K) is None  # δ(z)
    assert _closed_pair_matrices(pdlt.activation("erf"), [(0, 1)], K) is None


@pytest.mark.parametrize(
    "K",
    [
        [[1.0, 0.5], [0.5, 2.0]],
        [[3.5616, 3.5], [3.5, 3.5616]],  # GELU's critical K*, strongly correlated
        [[0.1, -0.15], [-0.15, 0.3]],
        [[2.0, 2.0], [2.0, 2.0]],  # coinciding
        [[0.5, 1.4], [1.4, 5.0]],
        [[1e-4, 0.0], [0.0, 40.0]],
    ],
)
def test_gelu_closed_forms_match_quadrature(K):
    """Tsuchida et al.'s GELU kernel and its K12-derivative ⟨σ'σ'⟩ against the engine's quadrature (≤ 1e-10)."""
    act = pdlt.activation("gelu")
    K = np.array(K)
    for orders in [(0, 0), (1, 1)]:
        c, err = expect(act, orders, K, method="closed")
        q, _ = expect(act, orders, K, method="quadrature")
        assert err == 0 and abs(c - q) <= 1e-10 * max(abs(q), 1e-3), (orders, c, q)


def test_layer_expectations_release_pair():
    """release_pair hands over a writable array that leaves the cache (the leading-order layer map
    overwrites it in place); the next pair() recomputes it."""
    from pdlt.contractions import LayerExpectations

    K = _awkward_kernel(12, np.random.default_rng(3), c_b=0.1)
    E = LayerExpectations(pdlt.activation("relu"), K)
    ref = E.pair(0, 0).copy()
    X = E.release_pair(0, 0)
    assert X.flags.writeable and np.array_equal(X, ref)
    X[:] = 0.0
    assert np.array_equal(E.pair(0, 0), ref)


# ------------------------------------------------------------- innermost level without a grid
@pytest.mark.parametrize(
    "name, kwargs", [("relu", {}), ("leaky_relu", {"slope": 0.2}), ("scale_invariant", {"a_plus": 0.7, "a_minus": -1.3})]
)
def test_scale_invariant_innermost_level_exact(name, kwargs):
    """E[Π σ^(d)(μ + s u)] in closed form (truncated Gaussian moments) against scipy.integrate.quad,
    split at the kink, including far tails and degenerate levels (s = 0: σ^(d)(μ) itself)."""
    from scipy import integrate

    from pdlt.gaussian import _derivative, _scale_invariant_level

    act = pdlt.activation(name, **kwargs)
    factor_sets = [(0,), (1,), (0, 0), (0, 1), (1, 1), (0, 0, 1), (0, 0, 0, 0), (0, 1, 1, 1)]
    for mu, s in [(0.3, 1.2), (-2.0, 0.5), (5.0, 0.3), (-7.0, 0.4), (0.0, 1.0), (1.5, 0.0), (0.0, 0.0)]:
        vals = _scale_invariant_level(act, factor_sets, np.array(mu), np.array(s))
        for f in factor_sets:

            def integrand(u):
                return np.prod([_derivative(act, np.array(mu + s * u), d) for d in f]) * math.exp(-0.5 * u * u) / math.sqrt(2 * math.pi)

            if s > 0:
                ref = sum(integrate.quad(integrand, a, b, epsabs=1e-14, epsrel=1e-13)[0] for a, b in [(-np.inf, -mu / s), (-mu / s, np.inf)])
            else:
                ref = integrand(0.0) * math.sqrt(2 * math.pi)
            assert abs(vals[f] - ref) <= 1e-12 * max(1.0, abs(ref)), (f, mu, s, vals[f], ref)


@pytest.mark.parametrize("name", ["tanh", "gelu", "sin"])
@pytest.mark.parametrize("k", [3, 4])
def test_tabulated_innermost_level_matches_grid(monkeypatch, name, k):
    """The tabulated innermost level (table over μ + 8th-order Lagrange interpolation) reproduces
    the full nested grid on 3-D and 4-D blocks, strongly correlated ones included, far inside the
    3–4-D accuracy target (1e-6): measured ≤ 4e-8, the level rule's own error."""
    import pdlt.gaussian as gaussian
    from pdlt.gaussian import quadrature_many

    act = pdlt.activation(name)
    rng = np.random.default_rng(10 * k)
    Ks = [rand_cov(k, scale, rng) for scale in (0.3, 1.0, 2.5)]
    X = rng.normal(size=(k, 3))
    X[1:] = X[0] + 0.05 * rng.normal(size=(k - 1, 3))
    Ks.append(X @ X.T)
    Ks = np.stack(Ks)
    patterns = sorted(set(itertools.product((0, 1), repeat=k)))
    tabulated, _ = quadrature_many(act, patterns, Ks, estimate_error=False)
    monkeypatch.setattr(gaussian, "_TABULATE_MIN_DIM", 5)
    grid, _ = quadrature_many(act, patterns, Ks, estimate_error=False)
    assert np.max(np.abs(tabulated - grid) / np.maximum(np.abs(grid), 1e-2)) <= 1e-7


# ---------------------------------------------------------------------------------------------
# singular blocks (a zero-variance input, linearly dependent inputs) for smooth σ


def test_derivative_route_equals_integration_by_parts_on_regular_blocks():
    # ⟨F H_e⟩ = ⟨∂^e F⟩: the route used on singular blocks agrees with the default on regular ones
    from pdlt import gaussian as g

    act = pdlt.activation("tanh")
    rng = np.random.default_rng(3)
    A = rng.normal(size=(5, 3, 3))
    K = A @ A.transpose(0, 2, 1) + 0.2 * np.eye(3)
    labels = (0, 1, 2)
    patterns = [((0, 0, 0), (1, 1, 0)), ((1, 0, 0), (0, 2, 0)), ((0, 1, 1), (1, 0, 1)), ((2, 0, 0), (0, 0, 0))]
    direct, _ = g._quadrature_group(act, patterns, K, labels, g.DEFAULT_RULE, False)
    via, _ = g._split_singular(act, patterns, K, labels, g.DEFAULT_RULE, False, np.ones(5, dtype=bool))
    np.testing.assert_allclose(via, direct, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("name", ["tanh", "gelu"])
def test_flow_with_a_zero_variance_input_is_the_limit_of_nearby_inputs(name):
    # x = 0 with C_b = 0 gives K_00 = 0 at layer 1 (tanh keeps it 0): the 1/n tensors are finite and
    # continuous in x → 0 instead of failing in integration by parts
    net = pdlt.MLP(input_dim=1, hidden_widths=[16] * 2, output_dim=1, activation=pdlt.activation(name), c_b=0.0, c_w=1.0)
    at0 = pdlt.flow(net, np.array([[0.0], [1.0]]))[-1]
    near = pdlt.flow(net, np.array([[1e-4], [1.0]]))[-1]
    for field in ("K", "V", "G1", "Theta", "H1", "A", "B", "D", "F"):
        a, b = getattr(at0, field), getattr(near, field)
        assert np.all(np.isfinite(a)), field
        np.testing.assert_allclose(a, b, atol=2e-3 * np.max(np.abs(b)) + 1e-12, err_msg=field)


def test_kinked_activation_at_zero_variance_says_what_to_change():
    net = pdlt.MLP(input_dim=1, hidden_widths=[8] * 2, output_dim=1, activation=pdlt.activation("relu"), c_b=0.0, c_w=2.0)
    with pytest.raises(pdlt.errors.NumericalError, match="zero variance.*C_b > 0"):
        pdlt.flow(net, np.array([[0.0], [1.0]]))


def test_kinked_expectation_on_a_proportional_block_says_what_to_change():
    """⟨δ(z_a) σ(z_b)⟩ with z_b = c z_a exactly: integration by parts has no inverse; the error names the cause."""
    K = np.array([[1.0, -0.8], [-0.8, 0.64]])
    with pytest.raises(pdlt.errors.NumericalError, match=r"exactly proportional.*C_b > 0"):
        expect(pdlt.activation("relu"), (2, 0), K)


@pytest.mark.parametrize("c", [0.375, 2.5, -0.8])
def test_proportional_totals_have_closed_forms(c):
    """d^m/du^m[σ^(d1)(u)σ^(d2)(cu)] for ReLU, u ~ N(0, s²): relu(u)relu(cu) = c u²Θ(u) (c > 0) or 0 (c < 0)."""
    from pdlt.contractions import _proportional_total

    relu, var = pdlt.activation("relu"), np.array([1.7])
    pos = c > 0
    # <(u²Θ)''> = <2Θ> = 1; <(u²Θ)⁗> = <2δ'> = 0; <(Θ(u) c uΘ(u))'> = c<Θ + uδ> = c/2; <(ΘΘ)''> = <δ'> = 0
    expected = {(0, 0, 2): c if pos else 0.0, (0, 0, 4): 0.0, (1, 0, 1): c / 2 if pos else 0.0, (1, 1, 2): 0.0,
                (0, 0, 0): c * var[0] / 2 if pos else 0.0}
    for (d1, d2, m), want in expected.items():
        got = _proportional_total(relu, d1, d2, m, var, np.array([c]))[0]
        assert got == pytest.approx(want, abs=1e-10), (d1, d2, m)  # rounding of He_4 ~ t⁴ at |t| ≤ 8.5
    assert np.isnan(_proportional_total(relu, 2, 0, 1, var, np.array([c]))[0])  # δ is not an ordinary function


def test_relu_flow_on_exactly_proportional_inputs():
    """1-D inputs with C_b = 0: the flow is homogeneous, continuous in C_b → 0, and warns near (not at) proportionality."""
    import warnings

    X = np.array([[-1.0], [0.8], [0.3]])
    net = pdlt.MLP(input_dim=1, hidden_widths=[8, 8, 8], output_dim=1, activation=pdlt.activation("relu"), c_b=0.0, c_w=2.0)
    s = pdlt.flow(net, X)[-1]
    r = 0.8 / 0.3  # z(0.8) = r z(0.3) in every network: V scales with r per slot
    assert s.V[1, 1, 1, 1] == pytest.approx(r**4 * s.V[2, 2, 2, 2], rel=1e-12)
    assert s.V[1, 2, 1, 2] == pytest.approx(r**2 * s.V[2, 2, 2, 2], rel=1e-12)
    assert s.D[0, 0, 1, 2] == pytest.approx(r * s.D[0, 0, 2, 2], rel=1e-12)
    for f in ("V", "A", "B", "D", "F", "G1", "H1"):
        assert np.all(np.isfinite(getattr(s, f))), f
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = pdlt.flow(net.evolve(c_b=1e-3), X)[-1]  # nearly proportional, still accurate
    for f, tol in (("V", 3e-3), ("B", 4e-2), ("F", 2e-2), ("A", 2e-2), ("D", 2e-2)):
        a, b = getattr(t, f), getattr(s, f)
        assert np.max(np.abs(a - b)) <= tol * np.max(np.abs(b)), f
    with pytest.warns(pdlt.errors.AccuracyWarning, match="estimated relative error"):
        pdlt.flow(net.evolve(c_b=1e-5), X)
