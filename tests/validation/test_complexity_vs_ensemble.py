"""The model-complexity measure of pdlt.complexity against real finite-width networks (epilogue ε).

The output's excess kurtosis E[z⁴]/E[z²]² − 3 of one output neuron on one input is 3 V/(n K²) to
O(1/n) (theory/init.md; the scale-mixture form docs/information.md): three times the measure
``measures["V"]``, which grows ∝ r = L/n.  Real networks are sampled exactly for one input:
given the previous layer's activations s (length n_{ℓ−1}), the preactivations of layer ℓ of an MLP
with W_ij ~ N(0, C_W/n_{ℓ−1}), b_i ~ N(0, C_b) are i.i.d. N(0, C_b + C_W |s|²/n_{ℓ−1}) — so each
network costs O(L n) draws instead of O(L n²), which is the same distribution, not an approximation.

Tolerance: 4 standard errors (from 40 independent batches) plus the size of the neglected O(1/n²)
term, bounded by 3ε²/2 (ε = V/(nK²); docs/information.md, validity: O(1/n²) effects ≈ ε²/2 of
O(1)).  Runs at two widths and two depths, at the same and at double r = L/n.
"""

from __future__ import annotations

import numpy as np
import pytest

import pdlt
from pdlt.complexity import model_complexity

pytestmark = pytest.mark.slow

X = np.array([[1.0, 0.2]])


def _kurtosis(act_name: str, L: int, n: int, size: int, seed: int, batches: int = 40):
    act = pdlt.activation(act_name)
    net = pdlt.MLP(input_dim=2, hidden_widths=[n] * (L - 1), output_dim=1, activation=act).at_criticality()
    cb, cw = net.C_b, net.C_W
    rng = np.random.default_rng(seed)
    m = size // batches
    k = []
    for _ in range(batches):
        var = np.full(m, cb[0] + cw[0] * float(X[0] @ X[0]) / X.shape[1])
        for ell in range(1, L):
            z = rng.standard_normal((m, n)) * np.sqrt(var)[:, None]
            s = np.asarray(act(z), dtype=float)
            var = cb[ell] + cw[ell] * np.einsum("mi,mi->m", s, s) / n
        out = rng.standard_normal(m) * np.sqrt(var)
        k.append(np.mean(out**4) / np.mean(out**2) ** 2 - 3.0)
    k = np.asarray(k)
    return net, float(k.mean()), float(k.std(ddof=1) / np.sqrt(batches))


@pytest.mark.parametrize("act", ["tanh", "relu"])
def test_output_kurtosis_follows_the_L_over_n_measure(act):
    cases = [(4, 32), (8, 64), (8, 32)] if act == "tanh" else [(3, 64), (5, 128), (5, 64)]
    rows = []
    for i, (L, n) in enumerate(cases):
        net, kappa, se = _kurtosis(act, L, n, size=1_000_000, seed=100 + i)
        eps = model_complexity(net, X).measures["V"]
        rows.append((L, n, L / n, 3 * eps, kappa, se))
        print(f"{act} L={L} n={n} r={L / n:.4f}: predicted 3ε = {3 * eps:.4f}, measured {kappa:.4f} ± {se:.4f}")
        assert abs(kappa - 3 * eps) <= 4 * se + 1.5 * eps**2, (act, L, n, kappa, se, eps)
