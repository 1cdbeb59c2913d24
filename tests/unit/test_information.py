"""Entropy, mutual information and the optimal aspect ratio (book Appendix A; docs/information.md)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import pdlt
from pdlt.errors import NoCriticalityError, ParameterError, RegimeWarning
from pdlt.information import (
    gaussian_entropy,
    growth_rate,
    input_mutual_information,
    lognormal_scales,
    neuron_mutual_information,
    neuron_mutual_information_single_input,
    optimal_aspect_ratio,
    optimal_epsilon,
    output_entropy,
    scale_mixture_entropy,
    scale_mixture_mutual_information,
)
from pdlt.validity import validity


def test_gaussian_entropy_and_mixture_of_one_component():
    C = np.array([[2.0, 0.3], [0.3, 1.0]])
    assert gaussian_entropy(C, 3) == pytest.approx(1.5 * math.log(np.linalg.det(2 * math.pi * math.e * C)), rel=1e-14)
    # a one-component scale mixture is a Gaussian
    for m in (1, 2, 5):
        assert scale_mixture_entropy(m, [1.7]) == pytest.approx(gaussian_entropy(1.7 * np.eye(m)), rel=1e-12)
    with pytest.raises(ParameterError, match="positive definite"):
        gaussian_entropy([[1.0, 1.0], [1.0, 1.0]])


@pytest.mark.parametrize("na, nb", [(1, 1), (1, 3), (2, 2)])
def test_neuron_information_series_matches_exact_scale_mixture(na, nb):
    """I(A;B) = (ab/48)ε²[6 − (3(a+b) + 20)ε] + O(ε⁴) against exact quadrature of a log-normal mixture.

    The residual after subtracting the series, divided by ε⁴, must stay bounded as ε → 0: this
    checks both the ε² and the ε³ coefficients (an error δ in either shows up as δ/ε² or δ/ε).
    """
    ratios = []
    for s2 in (0.005, 0.01, 0.02):
        eps = math.expm1(s2)
        exact = scale_mixture_mutual_information(na, nb, *lognormal_scales(s2, 60))
        series = neuron_mutual_information_single_input(eps, na, nb)
        ratios.append((exact - series) / eps**4)
    assert np.all(np.abs(ratios) < 60 * na * nb)
    assert abs(ratios[0] - ratios[1]) < 0.2 * abs(ratios[0]) + 1  # converging to a constant
    # and the ε³ term is needed: without it the residual/ε⁴ blows up like 1/ε
    eps = math.expm1(0.005)
    exact = scale_mixture_mutual_information(na, nb, *lognormal_scales(0.005, 60))
    assert abs(exact - neuron_mutual_information_single_input(eps, na, nb, order=2)) / eps**4 > 50


def test_exact_mixture_information_keeps_growing():
    """The exact information grows monotonically with ε: r* is the edge of the expansion, not a true maximum."""
    vals = [scale_mixture_mutual_information(1, 1, *lognormal_scales(s2, 64), nodes=160) for s2 in (0.1, 0.3, 1.0, 2.0)]
    assert np.all(np.diff(vals) > 0)


def test_optimal_aspect_ratio_reproduces_book_values():
    assert optimal_epsilon(1) == pytest.approx(4 / 23)
    assert optimal_aspect_ratio(pdlt.activation("relu"), 1) == pytest.approx(4 / 115, rel=1e-9)
    assert optimal_aspect_ratio(pdlt.activation("tanh"), 1) == pytest.approx(6 / 23, rel=1e-6)
    assert optimal_aspect_ratio(pdlt.activation("tanh"), 3) == pytest.approx(4 / 29 * 1.5, rel=1e-6)
    assert optimal_aspect_ratio(2.0, 10) == pytest.approx(4 / 50 / 2)
    with pytest.raises(ParameterError):
        optimal_aspect_ratio(2.0, 1, gamma=0.5)
    with pytest.raises(NoCriticalityError):
        optimal_aspect_ratio(pdlt.activation("sigmoid"), 1)


def test_residual_growth_rate():
    relu, tanh = pdlt.activation("relu"), pdlt.activation("tanh")
    assert growth_rate(relu, 0.0) == pytest.approx(5.0, rel=1e-12)
    for g in (0.3, 0.5, 0.8, 0.95, -0.5):
        assert growth_rate(tanh, g) == pytest.approx(2 / 3 * (1 - g**4), rel=1e-6)
        # b = 1 of the tower (the three-point function Ω) and the b = 3 term, Q_3² = 4/(3π)
        nu_b1 = (1 - g**2) * (5 - g**2 + 16 / math.pi * g * (1 + g))
        nu_b3 = nu_b1 + 8 * (1 - g**2) ** 2 * g**3 / (3 * math.pi * (1 - g**3))
        nu = growth_rate(relu, g)
        if g > 0:
            assert nu_b3 <= nu + 1e-12  # every further term is positive
        assert nu == pytest.approx(nu_b3, rel=0.02 if g < 0.9 else 0.05)
    assert growth_rate(relu, 0.5) == pytest.approx(6.4963, abs=1e-4)
    # linear: Δ = 0, no odd correction: (1−γ²)(2(1−γ²) + 4γ²)
    assert growth_rate(pdlt.activation("linear"), 0.6) == pytest.approx(0.64 * (2 * 0.64 + 4 * 0.36), rel=1e-9)
    assert optimal_aspect_ratio(relu, 1, gamma=0.95) == pytest.approx(5 / growth_rate(relu, 0.95) * optimal_aspect_ratio(relu, 1))
    assert optimal_aspect_ratio(relu, 1, gamma=0.99) > 10 * optimal_aspect_ratio(relu, 1)
    with pytest.raises(ParameterError):
        growth_rate(relu, 1.0)
    # the residual shift of r* (docs/information.md table): ReLU r* first falls (the three-point
    # function adds coherently), then rises as γ → 1; tanh r* only rises
    table = {(relu, 0.0): 0.0348, (relu, 0.5): 0.0268, (relu, 0.8): 0.0402, (relu, 0.95): 0.127, (relu, -0.5): 0.0681,
             (tanh, 0.0): 0.261, (tanh, 0.5): 0.278, (tanh, 0.8): 0.442, (tanh, 0.95): 1.406}
    for (act, g), val in table.items():
        assert optimal_aspect_ratio(act, 1, gamma=g) == pytest.approx(val, rel=2e-3), (act.describe(), g)


def test_entropy_and_information_from_a_flow():
    net = pdlt.MLP(input_dim=2, hidden_widths=[32] * 3, output_dim=4, activation=pdlt.activation("tanh"), c_w=1.0, c_b=0.1)
    X = np.array([[1.0, 0.2], [-0.3, 0.8], [0.5, 0.5]])
    s = pdlt.flow(net, X)[-1]
    ent = output_entropy(s)
    assert ent.gaussian == pytest.approx(gaussian_entropy(s.K, 4))
    assert ent.metric == pytest.approx(2 * np.trace(np.linalg.solve(s.K, s.G1)) / 32)
    assert ent.non_gaussian < 0 and ent.total < ent.to_first_order
    lead, corr = input_mutual_information(s, [0], [1])
    rho = s.K[0, 1] / math.sqrt(s.K[0, 0] * s.K[1, 1])
    assert lead == pytest.approx(-2 * math.log(1 - rho**2), rel=1e-12)
    G = s.metric()
    exact = -2 * math.log(1 - G[0, 1] ** 2 / (G[0, 0] * G[1, 1]))
    assert lead + corr == pytest.approx(exact, abs=10 * corr**2 + 1e-12)
    # one input: the general V-contraction reduces to ab ε²/8
    s1 = s.restrict([0])
    eps = s1.V[0, 0, 0, 0] / (32 * s1.K[0, 0] ** 2)
    assert neuron_mutual_information(s1, 1, 3) == pytest.approx(3 * eps**2 / 8, rel=1e-12)
    assert neuron_mutual_information(s, 2, 2) > neuron_mutual_information(s1, 2, 2)


def test_validity_guide():
    relu = pdlt.activation("relu")
    wide = pdlt.MLP(input_dim=1, hidden_widths=[512] * 3, output_dim=1, activation=relu, c_w=2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RegimeWarning)
        rep = validity(wide, [[1.0]])
    assert rep.regime == "perturbative" and rep.epsilon == pytest.approx(15 / 512)
    assert rep.r_star == pytest.approx(4 / 115) and rep.aspect_ratio == pytest.approx(4 / 512)
    exact = (1 + 5 / 512) ** 3 - 1 - 15 / 512
    assert rep.next_order_exact == pytest.approx(exact)
    n = rep.width_for_accuracy(1e-4)
    assert (1 + 5 / n) ** 3 - 1 - 15 / n <= 1.05e-4 and (1 + 5 / (n - 8)) ** 3 - 1 - 15 / (n - 8) > 1e-4
    narrow = wide.evolve(hidden_widths=[12] * 3)
    with pytest.warns(RegimeWarning, match="does not converge"):
        assert validity(narrow, [[1.0]]).regime == "breakdown"
    mid = wide.evolve(hidden_widths=[64] * 3)
    with pytest.warns(RegimeWarning, match="exceeds"):
        assert validity(mid, [[1.0]]).regime == "beyond-optimal"
    res = pdlt.information  # residual networks: ν(γ) from the representative shortcut strength
    from pdlt_plugins.residual import ResidualMLP

    rnet = ResidualMLP(input_dim=1, hidden_widths=[256] * 3, output_dim=1, activation=relu, gamma=0.5).at_criticality()
    rep = validity(rnet, [[1.0]], warn_outside=False)
    assert rep.nu == pytest.approx(res.growth_rate(relu, 0.5))
    assert rep.next_order_exact is None and rep.next_order == pytest.approx(rep.epsilon**2 / 2)
