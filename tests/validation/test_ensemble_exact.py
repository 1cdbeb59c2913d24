"""Real-network ensembles vs exact results (theory/init.md §2–§5).

Every comparison is seeded and uses a tolerance of 4 standard errors as reported by the
ensemble.  The references are exact (no 1/n truncation):

* layer 1 is exactly Gaussian with a deterministic NTK;
* layer 2 statistics are exact Gaussian integrals over layer 1 (K, V, Θ, A, B, D, F), computed
  here by 2-D Gauss–Hermite quadrature (tanh) or arc-cosine closed forms (ReLU);
* deep linear networks: the all-orders two- and four-point laws (with biases, many inputs) and
  the single-input G_{2m} law, plus the exact Θ recursion;
* ReLU, one input, no biases: the all-orders product law for V.
"""

from __future__ import annotations

import numpy as np
import pytest

from pdlt import exact
from pdlt.activation import Activation
from pdlt.ensemble import output_moments, sample
from pdlt_plugins.architectures import MLP

try:  # the built-in activation plugins, when present
    from pdlt_plugins.activations import Linear, ReLU, Tanh

    _LINEAR, _RELU, _TANH = Linear(), ReLU(), Tanh()
except (ImportError, AttributeError, TypeError):  # minimal stand-ins

    class _Linear(Activation):
        name = "test_linear"

        def __call__(self, z):
            return np.asarray(z, dtype=float)

        def _derivative(self, z, order):
            return np.ones_like(z) if order == 1 else np.zeros_like(z)

    class _ReLU(Activation):
        name = "test_relu"
        max_derivative = 1

        def __call__(self, z):
            return np.maximum(z, 0.0)

        def _derivative(self, z, order):
            return (z > 0).astype(float)

    class _Tanh(Activation):
        name = "test_tanh"

        def __call__(self, z):
            return np.tanh(z)

        def _derivative(self, z, order):
            t = np.tanh(z)
            if order == 1:
                return 1 - t**2
            raise NotImplementedError

    _LINEAR, _RELU, _TANH = _Linear(), _ReLU(), _Tanh()

K_SIGMA = 4.0
X2 = np.array([[0.9, -0.4, 0.3], [-0.2, 0.7, 1.1]])


def assert_agrees(est, value, what, k=K_SIGMA):
    z = est.z_score(value)
    worst = np.unravel_index(np.nanargmax(np.abs(z)), z.shape) if z.size else ()
    assert np.all(np.abs(z) <= k), (
        f"{what}: max |z| = {np.abs(z[worst]):.2f} at {worst}: "
        f"MC {est.mean[worst]:.6g} ± {est.stderr[worst]:.2g} vs exact {np.asarray(value)[worst]:.6g}"
    )


def _wick_sum(T):
    """T_(12)(34) + T_(13)(24) + T_(14)(23) of a pair-structured four-index tensor."""
    return T + np.einsum("acbd->abcd", T) + np.einsum("adbc->abcd", T)


# ---------------------------------------------------------------------------------------------
# layer 1: exactly Gaussian, deterministic NTK


def test_first_layer_is_gaussian_with_deterministic_ntk():
    net = MLP(input_dim=3, hidden_widths=(6,), output_dim=4, activation=_TANH, c_b=0.3, c_w=1.7, lambda_b=0.8, lambda_w=1.3)
    stats = sample(net, X2, 6000, seed=101)
    l1 = stats.layer(1)
    xx = X2 @ X2.T / 3
    assert_agrees(l1.K, 0.3 + 1.7 * xx, "K^(1)")
    zero4 = np.zeros((2,) * 4)
    assert_agrees(l1.V, zero4, "V^(1)")
    assert_agrees(l1.V_one_neuron, zero4, "one-neuron connected four-point at layer 1")
    np.testing.assert_allclose(l1.Theta.mean, 0.8 + 1.3 * xx, rtol=1e-12)
    np.testing.assert_allclose(l1.Theta.stderr, 0.0, atol=1e-12)
    for name in ("A", "A_one_neuron", "B", "D", "D_one_neuron", "F"):
        np.testing.assert_allclose(getattr(l1, name).mean, 0.0, atol=1e-9, err_msg=name)


# ---------------------------------------------------------------------------------------------
# layer 2: exact Gaussian integrals over layer 1


def _gauss2(K, deg=120):
    """Nodes z (Q, 2) and weights w (Q,) for ⟨f(z)⟩ with z ~ N(0, K) (2-D Gauss–Hermite)."""
    u, w = np.polynomial.hermite_e.hermegauss(deg)
    w = w / np.sqrt(2 * np.pi)
    U = np.stack(np.meshgrid(u, u, indexing="ij"), axis=-1).reshape(-1, 2)
    return U @ np.linalg.cholesky(K).T, np.outer(w, w).ravel()


def _layer2_exact_tanh(net, X):
    """K, V, Θ, A, B, D, F of layer 2 (init.md §3–§5 with V^(1) = A^(1) = … = 0), exact."""
    cb1, cw1, lb1, lw1 = (net.hyperparameters(1)[p] for p in ("c_b", "c_w", "lambda_b", "lambda_w"))
    cb, C, lb, lw = (net.hyperparameters(2)[p] for p in ("c_b", "c_w", "lambda_b", "lambda_w"))
    xx = X @ X.T / X.shape[1]
    K1, T1 = cb1 + cw1 * xx, lb1 + lw1 * xx
    z, w = _gauss2(K1)
    sig, dsig = np.tanh(z), 1 - np.tanh(z) ** 2  # (Q, 2)
    E = lambda f: np.tensordot(w, f, axes=1)  # noqa: E731
    ss = sig[:, :, None] * sig[:, None, :]
    dd = dsig[:, :, None] * dsig[:, None, :]
    q = lw * ss + C * T1 * dd  # per-neuron NTK source
    s = C * ss  # per-neuron metric source
    cov = lambda a, b: E(a[:, :, :, None, None] * b[:, None, None]) - np.multiply.outer(E(a), E(b))  # noqa: E731
    ref = {
        "K": cb + C * E(ss),
        "Theta": lb + E(q),
        "V": cov(s, s),
        "A": cov(q, q),
        "D": cov(q, s),
        # B_{pqrs} = C² Θ_pr Θ_qs ⟨σ'_p σ'_q σ'_r σ'_s⟩,  F_{pqrs} = C² Θ_pr ⟨σ'_p σ_q σ'_r σ_s⟩
        "B": C**2 * np.einsum("pr,qs,pqrs->pqrs", T1, T1, E(np.einsum("np,nq,nr,ns->npqrs", dsig, dsig, dsig, dsig))),
        "F": C**2 * np.einsum("pr,pqrs->pqrs", T1, E(np.einsum("np,nq,nr,ns->npqrs", dsig, sig, dsig, sig))),
    }
    ref["V_one_neuron"] = _wick_sum(ref["V"])
    ref["A_one_neuron"] = ref["A"] + np.einsum("acbd->abcd", ref["B"]) + np.einsum("adbc->abcd", ref["B"])
    ref["D_one_neuron"] = ref["D"] + np.einsum("acbd->abcd", ref["F"]) + np.einsum("adbc->abcd", ref["F"])
    return ref


def test_layer2_tanh_all_tensors_exact():
    net = MLP(
        input_dim=3, hidden_widths=(8,), output_dim=6, activation=_TANH,
        c_b=(0.2, 0.1), c_w=(1.6, 1.3), lambda_b=(1.0, 0.5), lambda_w=(1.5, 2.0),
    )  # fmt: skip
    stats = sample(net, X2, 20000, seed=202)
    ref = _layer2_exact_tanh(net, X2)
    l2 = stats.layer(2)
    for name, value in ref.items():
        assert_agrees(getattr(l2, name), value, f"{name}^(2)")


def _arccos(K):
    """⟨σσ⟩ and ⟨σ'σ'⟩ of ReLU at kernel K (N×N): arc-cosine closed forms (init.md §4)."""
    d = np.sqrt(np.diag(K))
    cos = np.clip(K / np.outer(d, d), -1.0, 1.0)
    psi = np.arccos(cos)
    ss = np.outer(d, d) / (2 * np.pi) * (np.sin(psi) + (np.pi - psi) * cos)
    dd = (np.pi - psi) / (2 * np.pi)
    return ss, dd


def test_layer2_relu_kernel_and_ntk_mean_arccos():
    net = MLP(
        input_dim=3, hidden_widths=(10,), output_dim=5, activation=_RELU,
        c_b=(0.1, 0.2), c_w=(2.0, 1.8), lambda_b=(1.0, 0.5), lambda_w=(1.5, 2.0),
    )  # fmt: skip
    stats = sample(net, X2, 10000, seed=303)
    xx = X2 @ X2.T / 3
    K1, T1 = 0.1 + 2.0 * xx, 1.0 + 1.5 * xx
    ss, dd = _arccos(K1)
    assert_agrees(stats.layer(2).K, 0.2 + 1.8 * ss, "ReLU K^(2)")
    # Θ^(2) = λ_b + λ_W ⟨σσ⟩ + C_W ⟨σ'σ'⟩ Θ^(1)  (init.md §5)
    assert_agrees(stats.layer(2).Theta, 0.5 + 2.0 * ss + 1.8 * dd * T1, "ReLU Θ^(2)")


# ---------------------------------------------------------------------------------------------
# deep linear networks: exact to all orders


def test_deep_linear_multi_input_four_point_with_biases():
    widths, c_b, c_w = (2, 6, 10, 5, 3), 0.3, 1.1
    lam_b, lam_w = 0.7, 1.2
    net = MLP(
        input_dim=2, hidden_widths=widths[1:-1], output_dim=widths[-1], activation=_LINEAR,
        c_b=c_b, c_w=c_w, lambda_b=lam_b, lambda_w=lam_w,
    )  # fmt: skip
    X = np.array([[1.0, -0.5], [0.3, 0.8]])
    stats = sample(net, X, 40000, seed=404)
    G2, G4 = exact.deep_linear_four_point(X, widths, c_b=c_b, c_w=c_w)
    theta = lam_b + lam_w * X @ X.T / 2
    for ell in range(1, len(widths)):
        st, n = stats.layer(ell), widths[ell - 1]
        K = G2[ell - 1]
        assert_agrees(st.K, K, f"deep linear K^({ell})")
        KK = np.multiply.outer(K, K)
        assert_agrees(st.V, n * (G4[ell - 1] - KK), f"deep linear V^({ell})")
        assert_agrees(st.V_one_neuron, n * (_wick_sum(G4[ell - 1]) - _wick_sum(KK)), f"deep linear one-neuron V^({ell})")
        # exact for σ(z) = z: Θ^(ℓ+1) = λ_b + λ_W G^(ℓ) + C_W Θ^(ℓ); Θ^(1) is deterministic
        if ell == 1:
            np.testing.assert_allclose(st.Theta.mean, theta, rtol=1e-12)
        else:
            assert_agrees(st.Theta, theta, f"deep linear Θ^({ell})")
        theta = lam_b + lam_w * K + c_w * theta


def test_deep_linear_single_input_even_moments():
    widths, c_w = (3, 8, 12, 6, 10), (1.3, 0.9, 1.2, 1.1)
    net = MLP(input_dim=3, hidden_widths=widths[1:-1], output_dim=widths[-1], activation=_LINEAR, c_b=0.0, c_w=c_w)
    x = np.array([0.8, -1.1, 0.4])
    mom = output_moments(net, x, 40000, seed=505, max_order=3)
    double_factorial = {1: 1, 2: 3, 3: 15}
    for m in (1, 2, 3):
        G = exact.deep_linear_even_moment(m, x, widths, c_w=c_w)
        for ell in range(1, len(widths)):
            lm = mom.layer(ell)
            assert_agrees(lm.distinct[m - 1, 0], G[ell - 1], f"G_{2 * m}^({ell}) from distinct neurons")
            assert_agrees(lm.even[m - 1, 0], double_factorial[m] * G[ell - 1], f"E[z^{2 * m}]^({ell})")


# ---------------------------------------------------------------------------------------------
# scale-invariant product law


@pytest.mark.parametrize("n, size, seed", [(16, 20000, 606), (32, 20000, 607)])
def test_relu_exact_product_law_single_input(n, size, seed):
    L = 5
    widths = (3,) + (n,) * L
    net = MLP(input_dim=3, hidden_widths=(n,) * (L - 1), output_dim=n, activation=_RELU, c_b=0.0, c_w=2.0)
    x = np.array([0.5, -1.2, 0.9])
    stats = sample(net, x, size, seed=seed, ntk=False)
    K, V_over_n = exact.scale_invariant_product_law(x, widths, c_w=2.0, slopes=(1.0, 0.0))
    for ell in range(1, L + 1):
        st = stats.layer(ell)
        fan_in = widths[ell - 1]
        assert_agrees(st.K[0, 0], K[ell - 1], f"ReLU K^({ell}), n={n}")
        assert_agrees(st.V[0, 0, 0, 0], fan_in * V_over_n[ell - 1], f"ReLU V^({ell}), n={n}")
        assert_agrees(st.V_one_neuron[0, 0, 0, 0], 3 * fan_in * V_over_n[ell - 1], f"ReLU one-neuron V^({ell}), n={n}")


# ---------------------------------------------------------------------------------------------
# the exact laws among themselves


def test_exact_laws_are_mutually_consistent():
    widths, c_w = (3, 7, 4, 9, 5), (1.3, 0.8, 1.1, 1.4)
    x = np.array([0.4, -0.9, 1.3])
    G2, G4 = exact.deep_linear_four_point(x[None, :], widths, c_b=0.0, c_w=c_w)
    np.testing.assert_allclose([g[0, 0] for g in G2], exact.deep_linear_even_moment(1, x, widths, c_w), rtol=1e-13)
    np.testing.assert_allclose([g[0, 0, 0, 0] for g in G4], exact.deep_linear_even_moment(2, x, widths, c_w), rtol=1e-13)
    K, V_over_n = exact.scale_invariant_product_law(x, widths, c_w=c_w, slopes=(1.0, 1.0))
    np.testing.assert_allclose(K, [g[0, 0] for g in G2], rtol=1e-13)
    np.testing.assert_allclose(V_over_n, [g4[0, 0, 0, 0] - g2[0, 0] ** 2 for g2, g4 in zip(G2, G4)], rtol=1e-12)
    assert exact.scale_invariant_nu(1.0, 0.0) == pytest.approx(5.0)
    a = 0.3
    assert exact.scale_invariant_nu(1.0, a) == pytest.approx(6 * (1 + a**4) / (1 + a**2) ** 2 - 1)
    # leading order of the product law: V/(n K²) = ν(ℓ−1)/n (init.md §4)
    n = 1e6
    _, V = exact.scale_invariant_product_law(x, (3,) + (int(n),) * 4, c_w=2.0)
    K = exact.scale_invariant_product_law(x, (3,) + (int(n),) * 4, c_w=2.0)[0]
    np.testing.assert_allclose(V * n / K**2, 5 * np.arange(4), rtol=1e-4, atol=1e-12)


@pytest.mark.slow
def test_relu_exact_product_law_deep():
    """init.md §7 D1: ReLU at depth 11 (V/(nK²) ≈ 2× its leading-order value at n = 32)."""
    n, L = 32, 11
    widths = (3,) + (n,) * L
    net = MLP(input_dim=3, hidden_widths=(n,) * (L - 1), output_dim=n, activation=_RELU, c_b=0.0, c_w=2.0)
    x = np.array([0.5, -1.2, 0.9])
    stats = sample(net, x, 40000, seed=708, ntk=False)
    K, V_over_n = exact.scale_invariant_product_law(x, widths, c_w=2.0)
    for ell in range(2, L + 1):
        assert_agrees(stats.layer(ell).V[0, 0, 0, 0], n * V_over_n[ell - 1], f"ReLU V^({ell}), n={n}")
        assert_agrees(stats.layer(ell).K[0, 0], K[ell - 1], f"ReLU K^({ell}), n={n}")
