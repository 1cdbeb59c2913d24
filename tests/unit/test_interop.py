"""Unit tests of pdlt.interop.sklearn_kernel: the infinite-width kernel and NTK as scikit-learn
kernels, checked against pdlt's own flow and learning algorithms."""

from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest

import pdlt
from pdlt import interop
from pdlt.solver import solve
from pdlt.errors import ParameterError, PdltError

RNG = np.random.default_rng(0)
X_TRAIN = RNG.normal(size=(6, 3))
Y_TRAIN = np.sin(X_TRAIN[:, 0]) + 0.5 * X_TRAIN[:, 1] + 0.3 * RNG.normal(size=6)
X_TEST = RNG.normal(size=(5, 3))


@pytest.fixture(scope="module")
def sklearn():
    return pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def net():
    # C_b > 0 keeps the ReLU kernel of a handful of generic inputs well conditioned
    return pdlt.MLP(input_dim=3, hidden_widths=[16] * 2, output_dim=1, activation=pdlt.activation("relu"),
                    c_b=0.1, c_w=2.0)


def test_missing_sklearn_raises_a_pdlt_error(monkeypatch, net):
    monkeypatch.setattr(interop, "_CLASS", None)
    monkeypatch.setitem(sys.modules, "sklearn.gaussian_process.kernels", None)
    with pytest.raises(interop.MissingDependencyError, match="scikit-learn") as info:
        interop.sklearn_kernel(net)
    assert isinstance(info.value, PdltError) and isinstance(info.value, ImportError)


def test_kernel_values_are_the_flow(sklearn, net):
    k = interop.sklearn_kernel(net)
    both = np.vstack([X_TRAIN, X_TEST])
    fl = pdlt.flow(net, both, order="leading")
    np.testing.assert_allclose(k(X_TRAIN), fl[-1].K[:6, :6], rtol=1e-12)
    np.testing.assert_allclose(k(X_TRAIN, X_TEST), fl[-1].K[:6, 6:], rtol=1e-12)
    np.testing.assert_allclose(k.diag(X_TEST), np.diag(fl[-1].K)[6:], rtol=1e-12)
    ntk = interop.sklearn_kernel(net, kind="ntk")
    np.testing.assert_allclose(ntk(X_TEST, X_TRAIN), fl[-1].Theta[6:, :6], rtol=1e-12)
    np.testing.assert_allclose(ntk.diag(X_TEST), np.diag(fl[-1].Theta)[6:], rtol=1e-12)


def test_kernel_interface(sklearn, net):
    from sklearn.gaussian_process.kernels import Kernel

    k = interop.sklearn_kernel(net)
    assert isinstance(k, Kernel) and isinstance(k, interop.PdltKernel)
    assert k.is_stationary() is False and k.requires_vector_input
    assert k.hyperparameters == [] and k.n_dims == 0 and k.theta.shape == (0,)
    assert k.get_params() == {"net": net, "order": "leading", "kind": "kernel", "quadrature": None}
    K, grad = k(X_TRAIN, eval_gradient=True)
    assert K.shape == (6, 6) and grad.shape == (6, 6, 0)
    with pytest.raises(ValueError, match="Y is None"):
        k(X_TRAIN, X_TEST, eval_gradient=True)
    assert repr(k) == "PdltKernel(K^(L), relu, depth 3, order='leading')"
    assert k == interop.sklearn_kernel(net) and k != interop.sklearn_kernel(net, kind="ntk")


def test_gaussian_process_is_bayesian_inference_at_infinite_width(sklearn, net):
    from sklearn.gaussian_process import GaussianProcessRegressor

    noise = 0.05
    gp = GaussianProcessRegressor(interop.sklearn_kernel(net), alpha=noise).fit(X_TRAIN, Y_TRAIN)
    mean, std = gp.predict(X_TEST, return_std=True)
    post = solve(net, pdlt.Bayesian(noise_variance=noise), X_TRAIN, Y_TRAIN, X_TEST, order="leading")
    np.testing.assert_allclose(mean, post.mean_infinite[:, 0], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(std**2, np.diag(post.covariance_infinite[:, 0, :, 0]), rtol=1e-9, atol=1e-12)


def test_ntk_regression_is_gradient_descent_to_convergence(sklearn, net):
    from sklearn.gaussian_process import GaussianProcessRegressor

    gp = GaussianProcessRegressor(interop.sklearn_kernel(net, kind="ntk"), alpha=1e-12).fit(X_TRAIN, Y_TRAIN)
    trained = solve(net, pdlt.GradientDescent(learning_rate=0.01), X_TRAIN, Y_TRAIN, X_TEST, order="leading")
    np.testing.assert_allclose(gp.predict(X_TEST), trained.mean_infinite[:, 0], rtol=1e-8, atol=1e-10)


def test_composes_with_sklearn_kernels_and_fits_the_noise(sklearn, net):
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, WhiteKernel

    kernel = ConstantKernel(1.0) * interop.sklearn_kernel(net) + WhiteKernel(0.1)
    gp = GaussianProcessRegressor(kernel, random_state=0).fit(X_TRAIN, Y_TRAIN)
    assert gp.kernel_.theta.shape == (2,)  # the constant and the noise level were optimised
    assert np.all(np.isfinite(gp.predict(X_TEST)))
    assert np.isfinite(gp.log_marginal_likelihood_value_)


def test_fitted_model_pickles(sklearn, net):
    from sklearn.gaussian_process import GaussianProcessRegressor

    gp = GaussianProcessRegressor(interop.sklearn_kernel(net), alpha=0.1).fit(X_TRAIN, Y_TRAIN)
    again = pickle.loads(pickle.dumps(gp))
    np.testing.assert_array_equal(again.predict(X_TEST), gp.predict(X_TEST))


def test_full_order_is_the_finite_width_two_point_function(sklearn):
    # order="full" costs O(N⁴) per call: two inputs of a smooth σ keep this quick
    net = pdlt.MLP(input_dim=3, hidden_widths=[16] * 2, output_dim=1, activation=pdlt.activation("tanh"))
    X = X_TRAIN[:2]
    fl = pdlt.flow(net, X, order="full")
    k = interop.sklearn_kernel(net, order="full")
    np.testing.assert_allclose(k(X), fl[-1].metric(), rtol=1e-12)
    np.testing.assert_allclose(k.diag(X), np.diag(fl[-1].metric()), rtol=1e-12)
    ntk = interop.sklearn_kernel(net, order="full", kind="ntk")
    np.testing.assert_allclose(ntk(X), fl[-1].ntk_mean(), rtol=1e-12)


def test_invalid_arguments(sklearn, net):
    with pytest.raises(ParameterError, match="'kind'"):
        interop.sklearn_kernel(net, kind="nngp")
    with pytest.raises(ParameterError, match="'order'"):
        interop.sklearn_kernel(net, order="dntk")
    with pytest.raises(ParameterError, match="'net'"):
        interop.sklearn_kernel("relu")
    with pytest.raises(ParameterError, match="input_dim = 3"):
        interop.sklearn_kernel(net)(np.zeros((2, 2)))
