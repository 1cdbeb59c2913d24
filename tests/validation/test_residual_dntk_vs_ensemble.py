"""Residual dNTK/ddNTK statistics P, Q, R, S, T, U: recursions against real residual networks.

Real residual tanh networks (book Appendix B; ``pdlt.dntk_ensemble.sample_dntk``, exact per-network
jets with the shortcut) of depth L = 3, widths 2 → n → n → n, two inputs, all 16 sample components.
The output layer carries a shortcut (γ^(3) = 0.6, ξ = 0.9), so its P..U come from the residual
layer map (:func:`pdlt_plugins.residual.residual_dntk_step`) applied to layer-2 tensors that are all
non-zero (layer 2 is a plain layer: its two-neuron correlators factorise exactly at O(1/n), so the
comparison tests the residual layer map itself and not the closure).  Only two output neurons enter
the estimators (``outputs=[0, 1]``: neurons are exchangeable).  Widths n = 16, 32, 64; the fan-in
normalised means n·E[…] are fitted as a + b/n per component and a is compared with the recursion,
|a − prediction| ≤ 4 SE(a) per component.  Power: the plain-MLP layer map applied to the same
layer-2 statistics (the shortcut terms dropped) is excluded for every tensor.

Measured with 2·10⁵ networks per width (docs/residual.md, "dNTK and ddNTK of residual networks"):
max |dev| 1.75σ over the 96 components, χ² 8–24 per tensor (16 components, correlated and partly
duplicated by symmetry); plain-MLP map χ² 2·10⁴ – 2·10⁶.  With the shortcut also at layer 2 (closure
for the lower tensors) the deviations are 0.5–4.5 % of each tensor's largest component (up to 53σ at
that statistics) — the closure error documented there, not tested here.

Two further tests check the O(1/n) GD-trained mean and covariance of real residual tanh networks
against ``pdlt.solve`` (one set of trained ensembles, a module-scoped fixture).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import pdlt
from pdlt.contractions import LayerExpectations
from pdlt.dntk_ensemble import sample_dntk
from pdlt_plugins.activations import Tanh
from pdlt_plugins.dntk_recursions import dntk_step
from pdlt_plugins.residual import ResidualMLP

K_SIGMA = 4.0
X = np.array([[-1.6038, 0.0641], [0.7409, 0.1526]])
KW = dict(input_dim=2, activation=Tanh(), c_w=1.2, c_b=0.1, lambda_b=0.8, lambda_w=1.1, xi=0.9, gamma=(0.0, 0.0, 0.6))
RUNS = ((16, 100_000), (32, 100_000), (64, 50_000))
FIELDS = ("P", "Q", "R", "S", "T", "U")


def _fit(ns, ms, ses):
    """Weighted least squares m(n) = a + b/n per component; returns a, SE(a)."""
    A = np.stack([np.ones(len(ns)), 1.0 / np.asarray(ns, dtype=float)], axis=1)
    a = np.empty(ms.shape[1:])
    sa = np.empty(ms.shape[1:])
    for idx in itertools.product(*(range(k) for k in ms.shape[1:])):
        w = 1.0 / ses[(slice(None),) + idx] ** 2
        cov = np.linalg.inv(A.T @ (w[:, None] * A))
        a[idx] = (cov @ (A.T @ (w * ms[(slice(None),) + idx])))[0]
        sa[idx] = np.sqrt(cov[0, 0])
    return a, sa


@pytest.mark.slow
def test_residual_dntk_recursions_match_real_residual_networks():
    est = {}
    for seed, (n, size) in enumerate(RUNS):
        net = ResidualMLP(hidden_widths=(n, n), output_dim=n, **KW)
        st = sample_dntk(net, X, size, seed=100 + seed, outputs=[0, 1])
        est[n] = st
    ns = [n for n, _ in RUNS]
    theory_net = ResidualMLP(hidden_widths=(32, 32), output_dim=32, **KW)
    flow = pdlt.flow(theory_net, X, order="dntk")
    h = theory_net.effective_hyperparameters(3)
    plain = dntk_step(LayerExpectations(theory_net.activation, flow[1].K), flow[1], h["c_w"], h["lambda_w"], undefined="nan")
    for name in FIELDS:
        ms = np.stack([est[n][name].mean for n in ns])
        ses = np.stack([est[n][name].stderr for n in ns])
        a, sa = _fit(ns, ms, ses)
        pred = getattr(flow[-1], name)
        dev = (a - pred) / sa
        print(f"{name}: max |dev| {np.abs(dev).max():.2f}σ, chi2 {np.sum(dev**2):.1f}; plain-MLP map max |dev| {np.abs((a - plain[name]) / sa).max():.0f}σ")
        assert np.all(np.abs(dev) <= K_SIGMA), (name, np.abs(dev).max())
        # power: dropping the shortcut terms of the layer map is excluded
        dev_plain = (a - plain[name]) / sa
        assert np.abs(dev_plain).max() > 2.5 * K_SIGMA, (name, np.abs(dev_plain).max())  # excluded at > 10σ


_ABOVE_RUNS = ((16, 200_000), (32, 200_000), (64, 100_000), (128, 50_000))


@pytest.mark.slow
@pytest.mark.parametrize("act_name", ["tanh", "gelu"])
@pytest.mark.parametrize("config", ["plain_above", "adjacent", "run3"])
def test_layer_above_a_shortcut_matches_real_networks(config, act_name):
    """P..U of the layer above a residual layer over a plain layer: exact self terms.

    Widths 2 → n → n → n_L.  ``plain_above``: γ = (0, 0.6, 0), n_L = 2 — the plain output's dNTK map
    consumes the two-neuron correlators of the residual layer 2, whose "self" parts (neuron j's branch
    reading x_k, whose shortcut feeds z_k) the closure keeps only to first Hermite order and, for a
    non-odd σ, without their odd parts.  ``adjacent``: γ = (0, 0.6, 0.6), n_L = n (two output neurons in
    the estimators) — the residual output layer's MLP part and its mixed terms consume the same
    correlators.  ``pdlt.flow`` uses their exact joint expectations
    (:func:`pdlt_plugins.residual._self_term_corrections`).  ``run3``: widths 2 → n → n → n → n,
    γ = (0, 0.6, 0.6, 0.6) — three adjacent shortcuts, where the corrections (plus, for GELU, the inherited
    odd couplings Φ, Ξ) are an approximation (≈ 1 % on the worst tensor).  n = 16, 32, 64, 128 (2·10⁵ …
    2.5·10⁴ networks), a + b/n per component, |a − prediction| ≤ 4 SE(a) over all 96 components; the
    closure (the last map without the corrections) is excluded.  Measured (max |dev|; closure's worst
    tensor): plain_above tanh 1.9σ (T 45σ), GELU 3.0σ (T 128σ); adjacent tanh 2.4σ (T 48σ), GELU 2.9σ;
    run3 tanh 3.5σ (T 26σ), GELU 2.3σ (T 156σ).  About 2–5 min each.
    """
    import attrs

    import pdlt as _pdlt
    from pdlt_plugins.residual import residual_dntk_step

    act = _pdlt.activation(act_name)
    gamma, hidden, seed0, runs = {
        "plain_above": ((0.0, 0.6, 0.0), 2, 500, _ABOVE_RUNS),
        "adjacent": ((0.0, 0.6, 0.6), 2, 700, _ABOVE_RUNS),
        "run3": ((0.0, 0.6, 0.6, 0.6), 3, 1100, ((16, 200_000), (32, 100_000), (64, 50_000), (128, 25_000))),
    }[config]
    kw = dict(KW, activation=act, gamma=gamma)
    top = config != "plain_above"  # residual output layer (n_L = n): two output neurons in the estimators
    est = {}
    for i, (n, size) in enumerate(runs):
        net = ResidualMLP(hidden_widths=(n,) * hidden, output_dim=n if top else 2, **kw)
        est[n] = sample_dntk(net, X, size, seed=seed0 + i, outputs=[0, 1] if top else None)
    ns = [n for n, _ in runs]
    tn = ResidualMLP(hidden_widths=(32,) * hidden, output_dim=32 if top else 2, **kw)
    fl = pdlt.flow(tn, X, order="dntk")
    L = tn.depth
    h = tn.effective_hyperparameters(L)
    bare = attrs.evolve(fl[L - 2], K_below=None, Theta_below=None)  # the closure: no self-term corrections
    closure = residual_dntk_step(tn, LayerExpectations(act, fl[L - 2].K), bare, h["c_w"], h["lambda_w"], h["gamma"],
                                 layer=L, F_next=None if top else fl[L - 1].F)
    worst_closure = 0.0
    for name in FIELDS:
        ms = np.stack([est[n][name].mean for n in ns])
        ses = np.stack([est[n][name].stderr for n in ns])
        a, sa = _fit(ns, ms, ses)
        dev = (a - getattr(fl[-1], name)) / sa
        dev_c = (a - closure[name]) / sa
        worst_closure = max(worst_closure, float(np.abs(dev_c).max()))
        print(f"{config} {act_name} {name}: max |dev| {np.abs(dev).max():.2f}σ (chi2 {np.sum(dev**2):.1f}); closure {np.abs(dev_c).max():.1f}σ")
        assert np.all(np.abs(dev) <= K_SIGMA), (name, np.abs(dev).max())
    assert worst_closure > 2.5 * K_SIGMA  # power: the self terms are resolved


_GD_Y = np.array([[0.6, -0.3], [-0.4, 0.5]])
_GD_XA, _GD_XB = np.array([[-1.2], [1.0]]), np.array([[0.2], [1.8]])
_GD_RUNS = ((16, 160_000), (32, 80_000), (64, 40_000))


def _gd_net(n, gamma=0.6):
    return ResidualMLP(input_dim=1, hidden_widths=[n] * 2, output_dim=2, activation=Tanh(), gamma=gamma, xi=0.9,
                       c_b=0.05).at_criticality()


@pytest.fixture(scope="module")
def residual_gd():
    """Theory and trained ensembles shared by the O(1/n) mean and covariance tests (γ = 0.6 at layer 2).

    Returns a dict with η, the predictions of ``pdlt.solve`` at n = 32 (``th``; ``no_dntk``: P..U set
    to zero; ``plain``: the γ = 0 network at its own criticality) and the control-variate ensembles
    ``runs`` {n: TrainedEnsemble} at n = 16, 32, 64.  About 3–4 CPU-minutes.
    """
    eta, th, no_dntk, runs = _gd_theory_and_runs(_gd_net, _GD_RUNS, seed0=7)
    plain = pdlt.solve(_gd_net(32, gamma=0.0), pdlt.GradientDescent(learning_rate=eta), _GD_XA, _GD_Y, _GD_XB)
    return dict(eta=eta, th=th, no_dntk=no_dntk, plain=plain, runs=runs)


def _gd_theory_and_runs(make_net, sizes, seed0):
    """η = 0.5/λ_max(Θ̃), ``pdlt.solve`` at n = 32 with and without P..U, and control-variate trained
    ensembles {n: TrainedEnsemble} of ``make_net(n)`` for the (n, size) pairs ``sizes``."""
    from pdlt.training import train_ensemble

    s = pdlt.flow(make_net(16), np.vstack([_GD_XA, _GD_XB]), order="leading")[-1]
    eta = 0.5 / np.linalg.eigvalsh(np.asarray(s.Theta)[:2, :2])[-1]
    th = pdlt.solve(make_net(32), pdlt.GradientDescent(learning_rate=eta), _GD_XA, _GD_Y, _GD_XB)
    no_dntk = pdlt.solve(make_net(32), pdlt.GradientDescent(learning_rate=eta, include_dntk=False), _GD_XA, _GD_Y, _GD_XB)
    runs = {}
    for n, size in sizes:
        r = train_ensemble(make_net(n), _GD_XA, _GD_Y, _GD_XB, learning_rate=eta, size=size, seed=seed0 + n,
                           control_variate=True, tol=1e-10)
        assert r.max_residual < 1e-9
        runs[n] = r
    return eta, th, no_dntk, runs


@pytest.mark.slow
def test_residual_gd_trained_mean_to_order_one_over_n(residual_gd):
    """O(1/n) GD trained mean of residual tanh networks (γ = 0.6 at layer 2, depth 3) vs real trained ensembles.

    n·(E[z_T] − m^∞) at n = 16, 32, 64 (control variate: mean − control = E[z_T] − m^∞ exactly),
    fitted as a + b/n; a is compared with fan_in × ``mean_correction`` of ``pdlt.solve`` (4 inputs:
    exact self-term P..U, the Hermite tower for the rank-one K^(1)).  Measured: a = −0.0030(29), −0.0235(29),
    0.0718(114), −0.0372(89) vs −0.0052, −0.0135, 0.1046, −0.0635: |z| = 0.75, 3.47, 2.87, 2.95 — O(1/n²)
    bias of this three-width fit: with n = 128 added (3·10⁴ networks) a + b/n + c/n² gives |z| ≤ 0.72 and
    the n = 32/64/128 fit |z| ≤ 1.3 (docs/residual.md); the prediction with P..U set to zero is excluded
    at 9.5σ and 11.2σ.  About 4 CPU-minutes (7.5 min wall on a busy 2-core machine; shared with the covariance test).
    """
    th, no_dntk, runs = residual_gd["th"], residual_gd["no_dntk"], residual_gd["runs"]
    ns = tuple(runs)
    ms = [n * runs[n].mean_minus_control.mean.ravel() for n in ns]
    ses = [n * runs[n].mean_minus_control.stderr.ravel() for n in ns]
    a, sa = _fit(ns, np.array(ms), np.array(ses))
    z = (a - 32 * th.mean_correction.ravel()) / sa
    z0 = (a - 32 * no_dntk.mean_correction.ravel()) / sa
    print(f"\nresidual GD 1/n mean: a = {np.round(a, 4)} ± {np.round(sa, 4)}, theory {np.round(32 * th.mean_correction.ravel(), 4)}, "
          f"z = {np.round(z, 2)}; without P..U z = {np.round(z0, 1)}")
    assert np.all(np.abs(z) <= K_SIGMA), z
    assert np.abs(z0).max() > K_SIGMA  # power: the dNTK/ddNTK contribution is resolved


@pytest.mark.slow
def test_residual_gd_trained_covariance_to_order_one_over_n(residual_gd):
    """O(1/n) GD trained covariance of the same residual tanh networks vs ``covariance_correction``.

    n·(Cov z_T − Σ^∞) over the 10 independent entries of the (test point, output) covariance, at
    n = 16, 32, 64 on the ensembles of the mean test, fitted as a + b/n; a is compared with
    fan_in × ``covariance_correction``, |z| ≤ 4 per entry.  The totals are compared (not
    ``covariance_minus_control``): the control's exact covariance P G Pᵀ contains G1 at depth 3.
    Power: the prediction with P..U set to zero and the γ = 0 network's prediction are excluded.
    Measured (tower for the rank-one K^(1), exact self-term P..U): max |z| = 1.35 (Σz² = 6.5); a = 0
    excluded at 6.3σ; without P..U excluded at 48σ, γ = 0 at 10.1σ.  (With the closure for the kernel/NTK
    sector — A, B measured 11 %, 3.7 % off at the output — max |z| was 3.6, Σz² 36.)
    """
    th, no_dntk, plain, runs = (residual_gd[k] for k in ("th", "no_dntk", "plain", "runs"))
    ns = tuple(runs)
    iu = np.triu_indices(4)  # entries [(β̇1, i), (β̇2, j)], flattened as 2β̇ + i
    sigma_inf = th.covariance_infinite.reshape(4, 4)
    cs = np.array([n * (runs[n].covariance.mean.reshape(4, 4) - sigma_inf)[iu] for n in ns])
    cses = np.array([n * runs[n].covariance.stderr.reshape(4, 4)[iu] for n in ns])
    a, sa = _fit(ns, cs, cses)

    def pred(d):
        return 32 * d.covariance_correction.reshape(4, 4)[iu]

    z, z0, zp = ((a - pred(d)) / sa for d in (th, no_dntk, plain))
    print(f"\nresidual GD 1/n covariance: a = {np.round(a, 4)} ± {np.round(sa, 4)}, theory {np.round(pred(th), 4)}, "
          f"z = {np.round(z, 2)} (Σz² {np.sum(z**2):.1f}); a/SE(a) = {np.round(a / sa, 1)}; "
          f"without P..U max |z| = {np.abs(z0).max():.1f}; γ = 0 max |z| = {np.abs(zp).max():.1f}")
    assert np.all(np.abs(z) <= K_SIGMA), z
    assert np.abs(z0).max() > K_SIGMA  # power: the dNTK/ddNTK contribution is resolved
    assert np.abs(zp).max() > K_SIGMA  # power: the shortcut's effect is resolved


_GELU_RUNS = ((16, 80_000), (32, 40_000), (64, 20_000))


@pytest.mark.slow
def test_residual_gelu_gd_trained_mean_and_covariance_to_order_one_over_n():
    """O(1/n) GD of real residual GELU networks (non-odd σ): shortcut at layer 2 (over the plain layer 1),
    plain output layer, depth 3, 1-D inputs, 2 training + 2 test points, two outputs — the configuration
    of the tanh tests above with GELU at its criticality.

    n·(E[z_T] − m^∞) (control variate) and n·(Cov z_T − Σ^∞) at n = 16, 32, 64, a + b/n, against
    fan-in × ``mean_correction`` / ``covariance_correction`` of ``pdlt.solve`` (P..U with the exact self
    terms, docs/residual.md; the Hermite tower for the rank-one K^(1)); |z| ≤ 4 per entry, P..U = 0
    excluded.  Measured: mean a = 0.314(22), −0.083(24), −0.542(21), 0.388(20) vs 0.310, −0.098, −0.513,
    0.358 (|z| ≤ 1.5; without P..U 8.5–19σ); covariance max |z| 1.1 over 10 entries (Σz² 2.8; without P..U
    14σ).  About 20 CPU-minutes (GELU networks converge slowly).
    """
    from pdlt_plugins.activations import GELU

    def gnet(n):
        return ResidualMLP(input_dim=1, hidden_widths=[n] * 2, output_dim=2, activation=GELU(), gamma=0.6, xi=0.9,
                           c_b=0.05).at_criticality()

    _, th, no, runs = _gd_theory_and_runs(gnet, _GELU_RUNS, seed0=31)
    power_mean, power_cov = _check_gd_mean_and_covariance("GELU residual GD", th, no, runs)
    assert power_mean > K_SIGMA and power_cov > K_SIGMA  # power: the dNTK/ddNTK contribution is resolved in both


def _check_gd_mean_and_covariance(label, th, no, runs):
    """n·(E[z_T] − m^∞) (control variate) and n·(Cov z_T − Σ^∞) over the widths of ``runs``, a + b/n, against
    fan-in 32 × ``mean_correction`` / ``covariance_correction`` of ``th``, |z| ≤ 4 per entry.  Returns the
    largest |z| of the prediction ``no`` (P..U set to zero) for the mean and for the covariance."""
    ns = tuple(runs)
    a, sa = _fit(ns, np.array([n * runs[n].mean_minus_control.mean.ravel() for n in ns]),
                 np.array([n * runs[n].mean_minus_control.stderr.ravel() for n in ns]))
    z = (a - 32 * th.mean_correction.ravel()) / sa
    z0 = (a - 32 * no.mean_correction.ravel()) / sa
    print(f"\n{label} mean: a = {np.round(a, 4)} ± {np.round(sa, 4)}, theory "
          f"{np.round(32 * th.mean_correction.ravel(), 4)}, z = {np.round(z, 2)}; without P..U z = {np.round(z0, 1)}")
    iu = np.triu_indices(4)
    sig = th.covariance_infinite.reshape(4, 4)
    a, sa = _fit(ns, np.array([n * (runs[n].covariance.mean.reshape(4, 4) - sig)[iu] for n in ns]),
                 np.array([n * runs[n].covariance.stderr.reshape(4, 4)[iu] for n in ns]))
    zc = (a - 32 * th.covariance_correction.reshape(4, 4)[iu]) / sa
    zc0 = (a - 32 * no.covariance_correction.reshape(4, 4)[iu]) / sa
    print(f"{label} covariance: z = {np.round(zc, 2)} (Σz² {np.sum(zc**2):.1f}); without P..U max |z| {np.abs(zc0).max():.1f}")
    assert np.all(np.abs(z) <= K_SIGMA), z
    assert np.all(np.abs(zc) <= K_SIGMA), zc
    return float(np.abs(z0).max()), float(np.abs(zc0).max())


def _run_of_three_net(n, act=None):
    """Hidden widths n, n, n, n with a scalar γ: shortcuts at layers 2, 3, 4 (a run of three adjacent
    shortcut layers, where the dNTK statistics use the corrected closure) and a plain output layer."""
    return ResidualMLP(input_dim=1, hidden_widths=[n] * 4, output_dim=2, activation=act or Tanh(), gamma=0.5, xi=0.9,
                       c_b=0.05).at_criticality()


@pytest.mark.slow
@pytest.mark.parametrize("act_name", ["tanh", "gelu"])
def test_residual_gd_with_a_run_of_three_shortcut_layers(act_name):
    """O(1/n) GD of real residual networks of depth 5 whose scalar γ = 0.5 puts shortcuts at layers
    2, 3, 4 — the default layout of ``ResidualMLP(hidden_widths=[n] * 4, gamma=...)`` and the case where
    the dNTK statistics are approximate (≈ 1 % at a run of three, docs/residual.md).  Same inputs, labels,
    widths and ensemble sizes as the depth-3 tests above (tanh and GELU, each at its criticality).

    Measured, tanh: mean a = 0.0131(49), −0.0712(51), −0.0162(63), 0.0225(72) vs fan-in × ``mean_correction``
    0.0077, −0.0688, 0.0024, 0.0261 (z = 1.11, −0.46, −2.96, −0.51; P..U = 0 excluded at 8.0σ); covariance
    max |z| 1.07 over 10 entries (Σz² 3.0; P..U = 0 excluded at 57σ).  About 25 CPU-minutes.
    GELU (the odd couplings Φ, Ξ of the run enter): mean a = 0.379(44), 0.271(33), −1.110(49), 0.852(48) vs
    0.363, 0.214, −1.122, 0.902 (|z| ≤ 1.73; P..U = 0 excluded at 17σ); covariance max |z| 2.40 (Σz² 13.9;
    P..U = 0 excluded at 20σ).  About 45 CPU-minutes.
    """
    from pdlt_plugins.activations import GELU

    act = Tanh() if act_name == "tanh" else GELU()
    sizes = _GD_RUNS if act_name == "tanh" else _GELU_RUNS
    _, th, no, runs = _gd_theory_and_runs(lambda n: _run_of_three_net(n, act), sizes, seed0=900)
    power_mean, power_cov = _check_gd_mean_and_covariance(f"{act_name} residual GD, shortcuts at layers 2-4", th, no, runs)
    assert power_mean > K_SIGMA and power_cov > K_SIGMA  # power: the dNTK/ddNTK contribution is resolved in both
