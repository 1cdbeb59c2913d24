"""Hypothesis properties of :func:`pdlt.flow` (theory/init.md §3–§6, ntk-nlo.md §1).

Structural facts that hold for every architecture, activation and input set, independently of
the values of the Gaussian integrals:

* K and Θ are symmetric positive semi-definite at every layer (Θ' = λ_b + λ_W⟨σσ⟩ + C⟨σ'σ'⟩∘Θ is
  a sum of PSD matrices, by the Schur product theorem), and so are the NTK covariances A + 2B
  and B as matrices over input pairs;
* the symmetries of V, A, B, D, F, G1, H1 (init.md §3, §5 and pitfall 6);
* homogeneity for scale-invariant σ at C_b = 0 (and λ_b = 0 for the NTK tensors);
* the tensors depend on the widths only through the ratios r_ℓ, so the metric K + G1/n → K as
  all widths grow at fixed ratios;
* marginalisation over samples (book §4.4): the flow on a subset of the inputs is the
  restriction of the flow on all of them; permuting the inputs permutes every tensor; duplicated
  inputs give identical rows.

Flows with three inputs need three-dimensional quadratures (≈ 1.5 s each), so examples are few
and N ≤ 3; the tolerances are far above the engine's quadrature error (``Statistics.quadrature_error``).
"""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

import pdlt

FIELDS2 = ("K", "Theta", "G1", "H1")
FIELDS4 = ("V", "A", "B", "D", "F")
FIELDS = FIELDS2 + FIELDS4
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)

ACTIVATIONS = ("tanh", "relu", "leaky_relu", "gelu", "linear", "sin")
SCALE_INVARIANT = ("relu", "leaky_relu", "linear")


# ---------------------------------------------------------------------------------------------
# strategies


@st.composite
def activations(draw, names=ACTIVATIONS):
    name = draw(st.sampled_from(names))
    if name == "leaky_relu":
        return pdlt.activation(name, slope=draw(st.floats(0.0, 0.8)))
    return pdlt.activation(name)


def _per_layer(L, lo, hi):
    return st.lists(st.floats(lo, hi, allow_nan=False), min_size=L, max_size=L).map(tuple)


@st.composite
def networks(draw, input_dim, *, names=ACTIVATIONS, depth=(2, 3), c_b=None, lambda_b=None):
    """An MLP with per-layer hyperparameters and small, unequal widths."""
    L = draw(st.integers(*depth))
    return pdlt.MLP(
        input_dim=input_dim,
        hidden_widths=draw(st.lists(st.integers(1, 9), min_size=L - 1, max_size=L - 1)),
        output_dim=draw(st.integers(1, 4)),
        activation=draw(activations(names)),
        c_b=draw(_per_layer(L, 0.0, 0.5)) if c_b is None else c_b,
        c_w=draw(_per_layer(L, 0.5, 2.5)),
        lambda_b=draw(_per_layer(L, 0.0, 2.0)) if lambda_b is None else lambda_b,
        lambda_w=draw(_per_layer(L, 0.0, 2.0)),
    )


@st.composite
def inputs(draw, n_inputs=st.integers(1, 2), input_dim=None):
    """(N, n_0) inputs with norms in [0.3, 3] and a well-conditioned Gram matrix.

    Kinked σ need linearly independent distinct inputs (the engine integrates by parts and says so
    with a NumericalError otherwise), hence n_0 ≥ N and the condition-number filter.
    """
    N = draw(n_inputs)
    n0 = draw(st.integers(N, 3)) if input_dim is None else input_dim
    X = np.array(draw(st.lists(st.floats(-2.0, 2.0, allow_nan=False), min_size=N * n0, max_size=N * n0))).reshape(N, n0)
    norms = np.linalg.norm(X, axis=1)
    assume(np.all(norms > 0.3) and np.all(norms < 3.0))
    Xn = X / norms[:, None]
    assume(np.linalg.cond(Xn @ Xn.T) < 20.0)
    return X


@st.composite
def net_and_inputs(draw, n_inputs=st.integers(1, 2), **kwargs):
    X = draw(inputs(n_inputs))
    return draw(networks(X.shape[1], **kwargs)), X


def _tol(flow):
    """Absolute tolerance per unit size: well above the engine's reported quadrature error."""
    return max(1e-9, 100 * max(s.quadrature_error for s in flow))


def _close(a, b, tol, what):
    scale = max(1.0, float(np.max(np.abs(a))))
    np.testing.assert_allclose(a, b, rtol=0, atol=tol * scale, err_msg=what)


# ---------------------------------------------------------------------------------------------
# positivity and symmetry


@settings(max_examples=40, **SETTINGS)
@given(case=net_and_inputs(n_inputs=st.integers(1, 3)))
def test_kernel_and_ntk_symmetric_psd(case):
    net, X = case
    f = pdlt.flow(net, X, order="leading")
    for s in f:
        for name in ("K", "Theta"):
            M = getattr(s, name)
            np.testing.assert_array_equal(M, M.T, err_msg=f"layer {s.layer} {name}")
            lam = np.linalg.eigvalsh(M)
            assert lam.min() >= -1e-10 * max(1.0, lam.max()), f"layer {s.layer} {name} eigenvalues {lam}"
        assert s.V is None and s.A is None  # leading order computes no 1/n tensors


@settings(max_examples=20, **SETTINGS)
@given(case=net_and_inputs())
def test_tensor_symmetries(case):
    net, X = case
    f = pdlt.flow(net, X)
    lead = pdlt.flow(net, X, order="leading")
    tol = _tol(f)
    for s, s0 in zip(f, lead):
        np.testing.assert_array_equal(s.K, s0.K)
        np.testing.assert_array_equal(s.Theta, s0.Theta)
        for name in ("G1", "H1"):
            M = getattr(s, name)
            _close(M, M.T, tol, f"layer {s.layer} {name}")
        V, A, B, D, F = s.V, s.A, s.B, s.D, s.F
        for name, T in (("V", V), ("A", A)):
            # within each pair, and pair exchange
            _close(T, T.transpose(1, 0, 2, 3), tol, f"layer {s.layer} {name} (12)")
            _close(T, T.transpose(0, 1, 3, 2), tol, f"layer {s.layer} {name} (34)")
            _close(T, T.transpose(2, 3, 0, 1), tol, f"layer {s.layer} {name} pairs")
        # D: (NTK pair, preactivation pair), symmetric within each pair only
        _close(D, D.transpose(1, 0, 2, 3), tol, f"layer {s.layer} D (12)")
        _close(D, D.transpose(0, 1, 3, 2), tol, f"layer {s.layer} D (34)")
        # F_pqrs = F_rspq; B_pqrs = B_rspq = B_qpsr (init.md §6 pitfall 6)
        _close(F, F.transpose(2, 3, 0, 1), tol, f"layer {s.layer} F")
        _close(B, B.transpose(2, 3, 0, 1), tol, f"layer {s.layer} B (pr)(qs)")
        _close(B, B.transpose(1, 0, 3, 2), tol, f"layer {s.layer} B neuron swap")
        # one-neuron connected four-point is fully symmetric
        V1 = V + V.transpose(0, 2, 1, 3) + V.transpose(0, 2, 3, 1)
        for perm in itertools.permutations(range(4)):
            _close(V1, V1.transpose(perm), tol, f"layer {s.layer} V one-neuron {perm}")
        # n·Cov(Ĥ_ii;α1α2, Ĥ_ii;α3α4) → A + 2B and n·E[Ĥ_ik;pr Ĥ_ik;qs] → B are covariance / Gram
        # matrices over input pairs, hence PSD (the connected V + V + V is not: n·Cov(z_i z_i) also
        # holds the O(n) Gaussian part)
        N = V.shape[0]
        A1 = A + B.transpose(0, 2, 1, 3) + B.transpose(0, 2, 3, 1)
        for name, T in (("A + 2B", A1), ("B", B.transpose(0, 2, 1, 3))):
            lam = np.linalg.eigvalsh(T.reshape(N * N, N * N))
            assert lam.min() >= -tol * max(1.0, lam.max()), f"layer {s.layer} {name} eigenvalues {lam}"


# ---------------------------------------------------------------------------------------------
# homogeneity


@settings(max_examples=20, **SETTINGS)
@given(
    case=net_and_inputs(names=SCALE_INVARIANT, c_b=0.0),
    scale=st.floats(0.2, 5.0),
    zero_lambda_b=st.booleans(),
)
@example(
    case=(pdlt.MLP(input_dim=2, hidden_widths=[3, 6], output_dim=2, activation=pdlt.activation("relu"), c_w=2.0, lambda_b=0.0),
          np.array([[1.0, 0.2], [-0.3, 0.8]])),
    scale=3.0,
    zero_lambda_b=True,
)  # fmt: skip
def test_scale_invariant_homogeneity(case, scale, zero_lambda_b):
    """C_b = 0: K, G1 ∝ s², V ∝ s⁴; with λ_b = 0 also Θ, H1 ∝ s² and A, B, D, F ∝ s⁴."""
    net, X = case
    if zero_lambda_b:
        net = net.evolve(lambda_b=0.0)
    f1, f2 = pdlt.flow(net, X), pdlt.flow(net, scale * X)
    tol = max(1e-6, 100 * max(s.quadrature_error for s in (*f1, *f2)))
    powers = dict(K=2, G1=2, V=4)
    if zero_lambda_b:
        powers.update(Theta=2, H1=2, A=4, B=4, D=4, F=4)
    for a, b in zip(f1, f2):
        for name, p in powers.items():
            _close(scale**p * getattr(a, name), getattr(b, name), tol, f"layer {a.layer} {name}")


# ---------------------------------------------------------------------------------------------
# widths


@settings(max_examples=15, **SETTINGS)
@given(case=net_and_inputs(), factor=st.integers(2, 50))
def test_infinite_width_limit_at_fixed_ratios(case, factor):
    """Multiplying every hidden and output width by m leaves all tensors unchanged (they depend on
    the ratios r_ℓ only), so each 1/n correction divided by n_{ℓ−1} falls as 1/m → 0."""
    net, X = case
    big = net.evolve(hidden_widths=[factor * w for w in net.hidden_widths], output_dim=factor * net.output_dim)
    f, g = pdlt.flow(net, X), pdlt.flow(big, X)
    tol = _tol(f)
    for a, b in zip(f, g):
        assert b.width == factor * a.width
        assert b.fan_in == (a.fan_in if a.layer == 1 else factor * a.fan_in)
        for name in FIELDS:
            _close(getattr(a, name), getattr(b, name), tol, f"layer {a.layer} {name}")
        if a.layer > 1:
            np.testing.assert_allclose(b.G1 / b.fan_in, a.G1 / a.fan_in / factor, rtol=1e-12, atol=0)
            np.testing.assert_allclose(b.H1 / b.fan_in, a.H1 / a.fan_in / factor, rtol=1e-12, atol=0)
            np.testing.assert_allclose(b.metric(), b.K + b.G1 / b.fan_in, rtol=1e-15, atol=0)
            np.testing.assert_allclose(b.ntk_mean(), b.Theta + b.H1 / b.fan_in, rtol=1e-15, atol=0)
    huge = net.evolve(hidden_widths=[10**9 * w for w in net.hidden_widths], output_dim=10**9 * net.output_dim)
    out = pdlt.flow(huge, X)[-1]
    np.testing.assert_allclose(out.metric(), out.K, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(out.ntk_mean(), out.Theta, rtol=1e-8, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# marginalisation over samples, permutations, duplicates


def _assert_flows_equal(f, g, tol, what):
    assert len(f) == len(g)
    for a, b in zip(f, g):
        assert (a.layer, a.width, a.fan_in) == (b.layer, b.width, b.fan_in)
        for name in FIELDS:
            _close(getattr(a, name), getattr(b, name), tol, f"{what}: layer {a.layer} {name}")


@settings(max_examples=10, **SETTINGS)
@given(case=net_and_inputs(n_inputs=st.integers(2, 3), depth=(2, 2)), data=st.data())
def test_restriction_commutes_with_flow(case, data):
    net, X = case
    N = X.shape[0]
    idx = sorted(data.draw(st.sets(st.integers(0, N - 1), min_size=1, max_size=N - 1)))
    f = pdlt.flow(net, X)
    restricted = [s.restrict(idx) for s in f]
    _assert_flows_equal(restricted, pdlt.flow(net, X[idx]), _tol(f), f"restrict {idx}")


@settings(max_examples=8, **SETTINGS)
@given(case=net_and_inputs(n_inputs=st.integers(2, 3), depth=(2, 2)), data=st.data())
def test_permuting_inputs_permutes_tensors(case, data):
    net, X = case
    perm = data.draw(st.permutations(range(X.shape[0])))
    f, g = pdlt.flow(net, X), pdlt.flow(net, X[perm])
    tol = _tol(f)
    for a, b in zip(f, g):
        for name in FIELDS:
            T = getattr(a, name)
            _close(T[np.ix_(*([perm] * T.ndim))], getattr(b, name), tol, f"perm {perm}: layer {a.layer} {name}")


@settings(max_examples=10, **SETTINGS)
@given(case=net_and_inputs(n_inputs=st.just(2)))
def test_duplicate_inputs_give_identical_rows(case):
    """Inputs (x, y, x): every tensor is unchanged by swapping index values 0 ↔ 2 on any axis."""
    net, X2 = case
    X = X2[[0, 1, 0]]
    f = pdlt.flow(net, X)
    for s in f:
        for name in FIELDS:
            T = getattr(s, name)
            for axis in range(T.ndim):
                np.testing.assert_allclose(
                    np.take(T, 0, axis=axis), np.take(T, 2, axis=axis), rtol=1e-9, atol=1e-12,
                    err_msg=f"layer {s.layer} {name} axis {axis}",
                )  # fmt: skip
    # and the distinct inputs reproduce the two-input flow
    _assert_flows_equal([s.restrict([0, 1]) for s in f], pdlt.flow(net, X2), _tol(f), "duplicate")
