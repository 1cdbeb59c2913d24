"""Large-depth asymptotics of the dNTK/ddNTK statistics at criticality (book §11.3, §∞.3).

:meth:`pdlt.CriticalityReport.dntk_ratios` gives the slopes c_X of P/(nΘ²), Q/(nΘ²),
R K/(nΘ³), S K/(nΘ³), T K/(nΘ³), U K/(nΘ³) ≈ c_X ℓ/n (derived in docs/dntk.md).  They are checked
against the recursions (:func:`pdlt_plugins.dntk_recursions.dntk_flow`) iterated for a single input
at equal widths.  The slope is estimated from three depths ℓ, 2ℓ, 4ℓ as
[(X(4ℓ) − X(2ℓ)) − (X(2ℓ) − X(ℓ))]/ℓ, which cancels the O(1) and O(log ℓ) subleading terms of the
ratio; what remains is O(log ℓ/ℓ) relative, and the tests also check that it shrinks with depth.
"""

from __future__ import annotations

import numpy as np
import pytest

import pdlt
from pdlt.criticality import learning_rate_schedule
from pdlt.errors import ParameterError
from pdlt_plugins.architectures import MLP
from pdlt_plugins.dntk_recursions import dntk_flow

X1 = np.array([[1.3]])


def ratios(f, ell):
    s = f.layer(ell)
    K, Th = s.K[0, 0], s.Theta[0, 0]
    return {"P": s.P[0, 0, 0, 0] / Th**2, "Q": s.Q[0, 0, 0, 0] / Th**2,
            **{k: getattr(s, k)[0, 0, 0, 0] * K / Th**3 for k in "RSTU"}}


def slopes(f, ell):
    r1, r2, r4 = ratios(f, ell), ratios(f, 2 * ell), ratios(f, 4 * ell)
    return {k: ((r4[k] - r2[k]) - (r2[k] - r1[k])) / ell for k in r1}


def k_star_zero_flow(name, depth, lambda_b):
    act = pdlt.activation(name)
    rep = pdlt.criticality(act)
    lb, lw = learning_rate_schedule(rep, depth, lambda_b=lambda_b, lambda_w=1.0)
    net = MLP(input_dim=1, hidden_widths=[4] * (depth - 1), output_dim=2, activation=act, c_w=rep.c_w, c_b=0.0,
              lambda_b=tuple(lb), lambda_w=tuple(lw))
    return rep, dntk_flow(net, X1)


@pytest.mark.parametrize("name,lambda_b", [("tanh", 1.0)])
def test_k_star_zero_slopes_match_recursions(name, lambda_b):
    rep, f = k_star_zero_flow(name, 200, lambda_b)
    pred = rep.dntk_ratios(lambda_b=lambda_b, lambda_w=1.0)
    near, far = slopes(f, 25), slopes(f, 50)
    scale = 1.0 / 12.0
    for k in "PQRSTU":
        err_near, err_far = abs(near[k] - pred[k]), abs(far[k] - pred[k])
        assert err_far <= 1e-2 * scale, (k, far[k], pred[k])
        # converging, not a coincidence (below 1e-3 of the scale the sign of the remainder may flip)
        assert err_far <= max(err_near, 1e-3 * scale), (k, err_near, err_far)


@pytest.mark.slow
@pytest.mark.parametrize("name,lambda_b", [("tanh", 0.3), ("sin", 0.5), ("erf", 2.0)])
def test_k_star_zero_slopes_deep(name, lambda_b):
    rep, f = k_star_zero_flow(name, 800, lambda_b)
    pred = rep.dntk_ratios(lambda_b=lambda_b, lambda_w=1.0)
    far = slopes(f, 200)
    for k in "PQRSTU":
        assert abs(far[k] - pred[k]) <= 3e-3 / 12.0, (k, far[k], pred[k])


@pytest.mark.parametrize("name", ["relu", "leaky_relu", "linear"])
def test_scale_invariant_slopes_match_recursions(name):
    act = pdlt.activation(name)
    rep = pdlt.criticality(act)
    lam_b, lam_w = 0.5, 1.0
    net = MLP(input_dim=1, hidden_widths=[4] * 99, output_dim=2, activation=act, c_w=rep.c_w, c_b=0.0,
              lambda_b=lam_b, lambda_w=lam_w)
    f = dntk_flow(net, X1, undefined="nan")
    K = f.layer(1).K[0, 0]
    f_w = lam_w * rep.A_2 * K / (lam_b + lam_w * rep.A_2 * K)
    pred = rep.dntk_ratios(f_w)
    got = slopes(f, 25)
    assert pred["P"] == 0.0 and np.all(f[-1].P == 0.0)
    for k, v in pred.items():
        assert abs(got[k] - v) <= 1e-3 * max(abs(pred["Q"]), 1e-12), (k, got[k], v)
    if name == "linear":
        assert set(pred) == set("PQRSTU")
    else:  # kinked: R, S, T, U are undefined at a single (coinciding) input
        assert set(pred) == {"P", "Q"} and np.isnan(f[-1].S[0, 0, 0, 0])


def test_known_values_and_errors():
    tanh = pdlt.criticality(pdlt.activation("tanh"))
    r = tanh.dntk_ratios(lambda_b=0.0)
    assert r["P"] == pytest.approx(-1 / 12) and r["Q"] == 0.0 and r["S"] == pytest.approx(1 / 12) and r["T"] == 0.0
    assert pdlt.criticality(pdlt.activation("relu")).dntk_ratios(1.0) == {"P": 0.0, "Q": pytest.approx(1 / 3)}
    with pytest.raises(ParameterError, match="'f_w'.*None"):
        pdlt.criticality(pdlt.activation("relu")).dntk_ratios()
    with pytest.raises(ParameterError, match="'f_w'"):
        tanh.dntk_ratios(0.5)
    with pytest.raises(ParameterError, match="lambda_b"):
        tanh.dntk_ratios(lambda_b=-1.0)
    with pytest.raises(NotImplementedError, match="half-stable"):
        pdlt.criticality(pdlt.activation("gelu")).dntk_ratios(lambda_b=1.0)
