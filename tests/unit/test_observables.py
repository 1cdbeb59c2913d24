"""Observables (pdlt.Observable and the built-ins of pdlt_plugins.observables): one formula for the
theory and for ensembles of real networks, with propagated standard errors."""

from __future__ import annotations

import numpy as np
import pytest

import pdlt
from pdlt import data
from pdlt.ensemble import Estimate, LayerStatistics
from pdlt.errors import ParameterError
from pdlt.plugins import available
from pdlt.testing import _exact_ensemble, check_observable, reference_problem
from pdlt.training import TrainedEnsemble

BUILTINS = {"kernel_diagonal", "kernel_correlation", "non_gaussianity", "ntk_variance_ratio", "trained_mean",
            "trained_variance", "test_mse", "test_bias_squared", "test_variance"}


@pytest.fixture(scope="module")
def stats():
    net, X = reference_problem("statistics")
    return pdlt.flow(net, X)[-1]


@pytest.fixture(scope="module")
def trained():
    net, (Xa, ya, Xb) = reference_problem("trained")
    return pdlt.solve(net, pdlt.Bayesian(noise_variance=0.01), Xa, ya, Xb, order="full", warn_regime=False)


def test_builtins_are_registered():
    assert BUILTINS <= set(available("observable"))


def test_formulas_on_theory(stats):
    n, K, T = stats.fan_in, stats.metric(), stats.ntk_mean()
    np.testing.assert_allclose(pdlt.observable("kernel_diagonal")(stats), np.diagonal(K))
    rho = pdlt.observable("kernel_correlation")(stats)
    np.testing.assert_allclose(rho, K / np.sqrt(np.outer(np.diagonal(K), np.diagonal(K))))
    v = np.einsum("aaaa->a", stats.V)
    np.testing.assert_allclose(pdlt.observable("non_gaussianity")(stats), v / (n * np.diagonal(K) ** 2), rtol=1e-12)
    a = np.einsum("aaaa->a", stats.A) + 2 * np.einsum("aaaa->a", stats.B)
    np.testing.assert_allclose(pdlt.observable("ntk_variance_ratio")(stats), a / (n * np.diagonal(T) ** 2), rtol=1e-12)
    # corrected=False uses the infinite-width K
    np.testing.assert_allclose(pdlt.observable("kernel_diagonal")(stats, corrected=False), np.diagonal(stats.K))


def test_test_error_decomposition_matches_trained_distribution(trained):
    y = np.array([[0.3], [-0.2]])
    e = trained.test_error(y)
    mse = pdlt.observable("test_mse", y_test=y)(trained)
    b = pdlt.observable("test_bias_squared", y_test=y)(trained)
    v = pdlt.observable("test_variance", y_test=y)(trained)
    assert float(mse) == pytest.approx(e.mse, rel=1e-12)
    assert float(mse) == pytest.approx(float(b) + float(v), rel=1e-12)
    np.testing.assert_allclose(pdlt.observable("trained_variance")(trained), trained.variance)
    with pytest.raises(ParameterError, match="y_test"):
        pdlt.observable("test_mse", y_test=np.zeros((3, 1)))(trained)


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_conformance(name):
    params = {"y_test": np.array([[0.1], [-0.4]])} if name.startswith("test_") else {}
    check_observable(pdlt.observable(name, **params))


def test_linear_observable_propagates_errors_exactly(stats):
    ens = _exact_ensemble(stats)
    se = np.full((3, 3), 0.01)
    ens = LayerStatistics(ell=ens.ell, width=ens.width, fan_in=ens.fan_in, K=Estimate(mean=ens.K.mean, stderr=se),
                          V=ens.V, V_one_neuron=ens.V_one_neuron)
    est = pdlt.observable("kernel_diagonal")(ens)
    np.testing.assert_allclose(est.stderr, 0.01, rtol=1e-6)


def test_ratio_propagation_matches_delta_method(stats):
    ens = _exact_ensemble(stats)
    K, Vo = ens.K.mean, ens.V_one_neuron.mean
    seK, seV = 1e-3 * np.abs(K) + 1e-4, 1e-2 * np.abs(Vo) + 1e-5
    ens = LayerStatistics(ell=ens.ell, width=ens.width, fan_in=ens.fan_in, K=Estimate(mean=K, stderr=seK),
                          V=ens.V, V_one_neuron=Estimate(mean=Vo, stderr=seV))
    est = pdlt.observable("non_gaussianity")(ens)
    n, k, v = stats.fan_in, np.diagonal(K), np.einsum("aaaa->a", Vo)
    f = v / (3 * n * k**2)
    expected = np.sqrt((np.einsum("aaaa->a", seV) / (3 * n * k**2)) ** 2 + (2 * f / k * np.diagonal(seK)) ** 2)
    np.testing.assert_allclose(est.stderr, expected, rtol=1e-5)


def test_random_direction_propagation_is_unbiased(monkeypatch, stats):
    import importlib

    mod = importlib.import_module("pdlt.observable")

    ens = _exact_ensemble(stats)
    ens = LayerStatistics(ell=ens.ell, width=ens.width, fan_in=ens.fan_in, K=ens.K, V=ens.V,
                          V_one_neuron=Estimate(mean=ens.V_one_neuron.mean, stderr=np.full((3,) * 4, 1e-3)))
    exact = pdlt.observable("non_gaussianity")(ens).stderr
    monkeypatch.setattr(mod, "_EXACT_PROPAGATION_MAX", 0)
    approx = pdlt.observable("non_gaussianity")(ens).stderr
    # 512 Rademacher directions: the only nonzero derivative is one component per output, so the
    # estimate is exact here (d² = J² se² for every direction)
    np.testing.assert_allclose(approx, exact, rtol=1e-6)


def test_wrong_source_and_types_are_refused(stats, trained):
    with pytest.raises(ParameterError, match="'trained'"):
        pdlt.observable("trained_mean")(stats)
    with pytest.raises(ParameterError, match="'statistics'"):
        pdlt.observable("kernel_diagonal")(trained)
    with pytest.raises(ParameterError, match="Got ndarray"):
        pdlt.observable("kernel_diagonal")(np.eye(3))


def test_leading_order_statistics_lack_the_vertex():
    net, X = reference_problem("statistics")
    with pytest.raises(ParameterError, match="order='full'"):
        pdlt.observable("non_gaussianity")(pdlt.flow(net, X, order="leading"))


def test_compare_against_a_real_ensemble():
    net = pdlt.MLP(input_dim=2, hidden_widths=[16, 16], output_dim=16, activation=pdlt.activation("tanh"))
    X = data.default_inputs()
    ens = pdlt.ensemble.sample(net, X, size=1000, seed=3, progress=False)
    cmp = pdlt.observable("ntk_variance_ratio").compare(pdlt.flow(net, X), ens)
    assert cmp.estimate.shape == (3,) and np.all(cmp.estimate.stderr > 0)
    assert cmp.max_abs_z < 5
    cmp = pdlt.observable("kernel_diagonal").compare(pdlt.flow(net, X), ens)
    assert cmp.infinite is not None and cmp.max_abs_z < 5


def test_trained_observable_on_a_trained_ensemble(trained):
    ens = _exact_ensemble(trained)
    assert isinstance(ens, TrainedEnsemble)
    est = pdlt.observable("trained_mean")(ens)
    np.testing.assert_array_equal(est.mean, trained.mean)
    assert np.all(est.stderr == 0)
