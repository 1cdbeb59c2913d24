"""Trained distributions vs ensembles of real networks trained by gradient descent (and vs exact
Bayesian conditioning of real networks).

Configuration of theory/trained-cov.md §4: L = 2 tanh MLP, n_0 = 1, C_W = 1.1, C_b = 0.05,
λ_b = λ_W = 1, n_L = 2; training inputs x = −1.2, 1.0 with labels y_1 = (0.6, −0.4),
y_2 = (−0.3, 0.5); test inputs x = 0.2, 1.8 (an extrapolation point); η = 0.5/λ_max(Θ̃); full-batch
GD until max |ε| < 1e-10.  Estimators: antithetic pairs and the control variate z_lin (the network's
own initial output mapped by the infinite-width solution), so that n·(E[z_T] − m^∞) and
n·(Cov z_T − Σ^∞) are estimated directly (pdlt.training).

Tolerances are k = 4 standard errors.  At two widths the coefficient of 1/n is extracted by the fit
m(n) = a + b/n and |a − theory| ≤ 4 SE(a) is required; each test also checks its power: a wrong
alternative (no dNTK/ddNTK terms; the third-party sign of 𝔪^ΔNTK) must be excluded.

Depth-3 tests need the dNTK statistics P..U of the output layer; they are skipped with a reason if
the statistics do not provide them.
"""

from __future__ import annotations

import attrs
import numpy as np
import pytest

import pdlt
from pdlt.solver import solve
from pdlt.training import train_ensemble
from pdlt_plugins.learning import Bayesian, GradientDescent

K_SIGMA = 4.0
TANH = pdlt.activation("tanh")
HYPER = dict(c_w=1.1, c_b=0.05, lambda_b=1.0, lambda_w=1.0)
XA = np.array([[-1.2], [1.0]])
XB = np.array([[0.2], [1.8]])
YA = np.array([[0.6, -0.3], [-0.4, 0.5]])  # [α̃, i]: y_1 = (0.6, −0.4), y_2 = (−0.3, 0.5)


def _net(width, depth=2, n_out=2):
    return pdlt.MLP(input_dim=1, hidden_widths=[width] * (depth - 1), output_dim=n_out, activation=TANH, **HYPER)


@pytest.fixture(scope="module")
def stats_L2():
    """Output statistics (with P..U) of the depth-2 configuration on (x_A, x_B); width-independent."""
    alg = GradientDescent(learning_rate=0.1)
    return alg.output_statistics(_net(64), np.vstack([XA, XB]), order="dntk")


def _eta(stats, factor):
    return factor / np.linalg.eigvalsh(np.asarray(stats.Theta)[:2, :2])[-1]


def _zero(stats, names):
    return attrs.evolve(stats, **{k: 0 * getattr(stats, k) for k in names})


def _theory(stats, eta, width=64, statistics=None):
    return solve(_net(width), GradientDescent(learning_rate=eta), XA, YA, XB, statistics=statistics or stats, warn_regime=False)


# entries (output, x)(output', x') in the order of trained-cov.md §4
_ENTRIES = [((0, 0), (0, 0)), ((0, 0), (0, 1)), ((0, 0), (1, 0)), ((0, 0), (1, 1)), ((0, 1), (0, 1)),
            ((0, 1), (1, 0)), ((0, 1), (1, 1)), ((1, 0), (1, 0)), ((1, 0), (1, 1)), ((1, 1), (1, 1))]


def _pick(C):
    return np.array([C[a[1], a[0], b[1], b[0]] for a, b in _ENTRIES])


# ---------------------------------------------------------------------------------------------
# theory: reproduction of the trained-cov.md §4 prediction (deterministic)


def test_trained_covariance_reproduces_the_published_prediction(stats_L2):
    eta = _eta(stats_L2, 0.5)
    assert eta == pytest.approx(0.1692, abs=1e-4)
    n = stats_L2.fan_in
    d = _theory(stats_L2, eta)
    sig = [0.0121, -0.0072, 0, 0, 0.0174, 0, 0, 0.0121, -0.0072, 0.0174]
    assert np.allclose(_pick(d.covariance_infinite), sig, atol=6e-5)
    pred = [-0.0135, 0.0044, -0.0012, 0.0003, -0.0390, 0.0003, 0.0052, -0.0151, 0.0069, -0.0411]
    # the published tensors came from 2·10⁶ Gaussian draws (error ≤ 3e-4 on the prediction)
    assert np.allclose(_pick(d.covariance_correction) * n, pred, atol=4e-4)
    parts = {  # tensors kept → published piece(s)
        ("D", "F"): [-0.0189, 0.0109, 0, 0, -0.0239, 0, 0, -0.0189, 0.0109, -0.0239],
        ("P", "Q"): [-0.0247, 0.0318, 0.0036, -0.0053, -0.1658, -0.0058, 0.0294, -0.0249, 0.0330, -0.1601],
        ("R", "S", "T", "U"): [-0.0007, 0.0031, 0.0001, -0.0007, -0.0530, -0.0007, 0.0080, -0.0006, 0.0040, -0.0508],
        # 𝒞^AB + the ΔNTK Stein term
        ("A", "B"): np.add([0.0308, -0.0423, -0.0049, 0.0063, 0.2173, 0.0068, -0.0322, 0.0293, -0.0418, 0.2071],
                           [0, 0.0009, 0, 0, -0.0135, 0, 0, 0, 0.0009, -0.0135]),
    }
    allt = ("A", "B", "D", "F", "P", "Q", "R", "S", "T", "U")
    for keep, ref in parts.items():
        s = _zero(stats_L2, [t for t in allt if t not in keep])
        got = _pick(_theory(s, eta, statistics=s).covariance_correction) * n
        assert np.allclose(got, ref, atol=1.5e-3), (keep, got, ref)
    # at y = 0 the covariance is δ_ij at this order
    d0 = solve(_net(64), GradientDescent(learning_rate=eta), XA, 0 * YA, XB, statistics=stats_L2, warn_regime=False)
    assert np.allclose(_pick(d0.covariance_correction) * n, [-0.0153, 0.0060, 0, 0, -0.0281, 0, 0, -0.0153, 0.0060, -0.0281], atol=4e-4)


# ---------------------------------------------------------------------------------------------
# real networks: GD


def _fit(ms, ses, widths):
    """Weighted least squares of m(n) = a + b/n; returns a, SE(a)."""
    w = 1.0 / np.asarray(ses) ** 2
    Xd = np.stack([np.ones(len(widths)), 1.0 / np.asarray(widths, dtype=float)], axis=1)
    a_list, se_list = [], []
    for j in range(ms.shape[1]):
        W = np.diag(w[:, j])
        cov = np.linalg.inv(Xd.T @ W @ Xd)
        coef = cov @ Xd.T @ W @ ms[:, j]
        a_list.append(coef[0])
        se_list.append(np.sqrt(cov[0, 0]))
    return np.array(a_list), np.array(se_list)


def _run(width, size, eta, seed):
    return train_ensemble(_net(width), XA, YA, XB, learning_rate=eta, size=size, seed=seed,
                          control_variate=True, linearized=True, tol=1e-10)


def _gd_check(stats, widths, size, eta, seed=0):
    """Fitted 1/n coefficients (a, SE(a), theory) of the total, frozen-random-NTK ("lin") and
    nonlinear (dNTK + ddNTK, "nl") parts of the trained mean and covariance."""
    th = _theory(stats, eta)
    lin = _theory(stats, eta, statistics=_zero(stats, ("P", "Q", "R", "S", "T", "U")))
    n0 = stats.fan_in
    runs = [_run(n, size, eta, seed + k) for k, n in enumerate(widths)]
    iu = np.triu_indices(4)
    flat = lambda C: C.reshape(4, 4)[iu]  # noqa: E731
    th_parts = {
        "mean": n0 * th.mean_correction.ravel(),
        "cov": n0 * flat(th.covariance_correction),
        "mean_lin": n0 * lin.mean_correction.ravel(),
        "cov_lin": n0 * flat(lin.covariance_correction),
        "mean_nl": n0 * (th.mean_correction - lin.mean_correction).ravel(),
        "cov_nl": n0 * flat(th.covariance_correction - lin.covariance_correction),
    }
    get = {
        "mean": lambda r: (r.mean_minus_control.mean.ravel(), r.mean_minus_control.stderr.ravel()),
        "cov": lambda r: (flat(r.covariance_minus_control.mean), flat(r.covariance_minus_control.stderr)),
        "mean_lin": lambda r: ((r.linearized_mean.mean - r.control_mean).ravel(), r.linearized_mean.stderr.ravel()),
        "cov_lin": lambda r: (flat(r.linearized_covariance.mean - r.control_covariance), flat(r.linearized_covariance.stderr)),
        "mean_nl": lambda r: (r.nonlinear_mean.mean.ravel(), r.nonlinear_mean.stderr.ravel()),
        "cov_nl": lambda r: (flat(r.nonlinear_covariance.mean), flat(r.nonlinear_covariance.stderr)),
    }
    out = {}
    for key, f in get.items():
        ms = np.array([n * f(r)[0] for n, r in zip(widths, runs)])
        ses = np.array([n * f(r)[1] for n, r in zip(widths, runs)])
        out[key] = (*_fit(ms, ses, widths), th_parts[key], ms, ses)
    return out, runs


def _assert_agrees(name, a, se, theory):
    z = (a - theory) / se
    assert np.all(np.abs(z) <= K_SIGMA), f"{name}: fitted 1/n coefficient {np.round(a, 4)} ± {np.round(se, 4)} vs theory {np.round(theory, 4)} (z = {np.round(z, 1)})"


def _excluded(a, se, alternative):
    return bool(np.any(np.abs(a - alternative) > K_SIGMA * se))


def test_gd_trained_mean_and_covariance_two_widths(stats_L2):
    eta = _eta(stats_L2, 0.5)
    out, runs = _gd_check(stats_L2, (64, 128), 16_000, eta, seed=11)
    for r in runs:
        assert r.max_residual < 1e-10
    for key in out:
        _assert_agrees(key, *out[key][:3])
    # power (each width on its own): the nonlinear part is resolved (the prediction without dNTK and
    # ddNTKs is excluded) and the third-party sign of 𝔪^ΔNTK (training.md §4.5 "Checks") is excluded
    for key, alternative in (("mean_nl", 0.0), ("cov_nl", 0.0), ("mean_lin", -1.0)):
        _, _, t, ms, ses = out[key]
        assert all(_excluded(m, se, alternative * t) for m, se in zip(ms, ses)), key


def test_control_variate_does_not_bias(stats_L2):
    """Same networks with and without the control variate: equal estimates within errors."""
    eta = _eta(stats_L2, 0.5)
    kw = dict(learning_rate=eta, size=2_000, seed=5, tol=1e-10)
    a = train_ensemble(_net(32), XA, YA, XB, control_variate=True, **kw)
    b = train_ensemble(_net(32), XA, YA, XB, control_variate=False, **kw)
    assert np.all(np.abs(a.mean.mean - b.mean.mean) <= K_SIGMA * b.mean.stderr)
    assert np.all(np.abs(a.covariance.mean - b.covariance.mean) <= K_SIGMA * b.covariance.stderr + 1e-12)
    # with antithetic pairs the control is constant per pair for the mean (z_lin averages to m^∞
    # over a pair), so the control variate acts on the covariance
    assert a.covariance.stderr.sum() < 0.8 * b.covariance.stderr.sum()


def test_gd_finite_steps_infinite_width_part():
    """Few steps at a wide width: the ensemble follows the frozen-NTK finite-T solution."""
    s = pdlt.flow(_net(512), np.vstack([XA, XB]), order="leading")[-1]
    eta = _eta(s, 0.5)
    d = solve(_net(512), GradientDescent(learning_rate=eta, steps=3), XA, YA, XB, order="leading")
    r = train_ensemble(_net(512), XA, YA, XB, learning_rate=eta, steps=3, size=2_000, seed=3)
    # finite-width deviations are O(1/n) ≈ 0.002 here; allow them on top of the MC error
    assert np.all(np.abs(r.mean.mean - d.mean) <= K_SIGMA * r.mean.stderr + 5e-3)
    assert np.all(np.abs(r.covariance.mean - d.covariance) <= K_SIGMA * r.covariance.stderr + 5e-3)


# ---------------------------------------------------------------------------------------------
# real networks: Bayesian inference, exact conditioning given layer 1 (Rao–Blackwellised)

_BAYES_X = np.array([[-1.0], [0.7], [0.2], [1.5]])  # two training then two test inputs
_BAYES_Y = np.array([[0.5, -0.2], [-0.3, 0.6]])


def _bayes_ensemble(width, size, noise, seed):
    """Posterior mean and covariance of the outputs of L = 2 networks, exactly conditioned on y
    (:func:`pdlt.training.bayesian_posterior_ensemble`), as ((mean, cov), (se_mean, se_cov))."""
    from pdlt.training import bayesian_posterior_ensemble

    m, C = bayesian_posterior_ensemble(_net(width), _BAYES_X[:2], _BAYES_Y, _BAYES_X[2:], noise_variance=noise,
                                       size=size, seed=seed, batches=20)
    return (m.mean, C.mean), (m.stderr, C.stderr)


@pytest.mark.parametrize("noise", [0.0, 0.2])
def test_bayesian_posterior_vs_exact_conditioning_of_real_networks(noise):
    widths = (8, 32)
    s = pdlt.flow(_net(8), _BAYES_X)[-1]
    alg = Bayesian(noise_variance=noise)
    th = alg.trained_distribution(s, np.arange(2), _BAYES_Y, np.arange(2, 4))
    ms, ses, cs, cses = [], [], [], []
    for k, n in enumerate(widths):
        (m, C), (se_m, se_C) = _bayes_ensemble(n, 400_000, noise, seed=100 + k)
        ms.append(n * (m - th.mean_infinite).ravel())
        ses.append(n * se_m.ravel())
        cs.append(n * (C - th.covariance_infinite)[:, 0, :, 0].ravel())
        cses.append(n * se_C[:, 0, :, 0].ravel())
    a, se = _fit(np.array(ms), np.array(ses), widths)
    _assert_agrees("posterior mean", a, se, s.fan_in * th.mean_correction.ravel())
    a, se = _fit(np.array(cs), np.array(cses), widths)
    _assert_agrees("posterior covariance", a, se, s.fan_in * th.covariance_correction[:, 0, :, 0].ravel())
    # power: the GP (no correction) is excluded for the mean
    a, se = _fit(np.array(ms), np.array(ses), widths)
    assert _excluded(a, se, 0 * a)


# ---------------------------------------------------------------------------------------------
# slow: larger widths, other learning rates, n_L = 1, depth 3


@pytest.mark.slow
def test_gd_trained_distribution_large_widths(stats_L2):
    eta = _eta(stats_L2, 0.5)
    out, _ = _gd_check(stats_L2, (128, 256, 512), 100_000, eta, seed=21)
    for key in out:
        _assert_agrees(key, *out[key][:3])


@pytest.mark.slow
@pytest.mark.parametrize("factor", [0.25, 1.0, 1.5])
def test_gd_learning_rate_dependence(stats_L2, factor):
    eta = _eta(stats_L2, factor)
    out, _ = _gd_check(stats_L2, (64, 128, 256), 60_000, eta, seed=31)
    for key in out:
        _assert_agrees(key, *out[key][:3])


@pytest.fixture(scope="module")
def stats_L3():
    alg = GradientDescent(learning_rate=0.1)
    s = alg.output_statistics(_net(64, depth=3), np.vstack([XA, XB]), order="dntk")
    if s.P is None:
        pytest.skip("the output statistics do not provide the dNTK tensors P..U (pdlt.flow(order='dntk') unavailable)")
    return s


@pytest.mark.slow
def test_gd_trained_distribution_depth_3(stats_L3):
    """Depth 3: tests H1 and G1 (𝔰 and the H1⋄ mean term) and the general-depth P..U recursions."""
    eta = _eta(stats_L3, 0.5)
    widths, sizes = (64, 128), (50_000, 30_000)  # ≈ 16 min on 2 cores
    th = solve(_net(64, 3), GradientDescent(learning_rate=eta), XA, YA, XB, statistics=stats_L3, warn_regime=False)
    n0 = stats_L3.fan_in
    runs = [train_ensemble(_net(n, 3), XA, YA, XB, learning_rate=eta, size=m, seed=41 + k, control_variate=True)
            for k, (n, m) in enumerate(zip(widths, sizes))]
    # with the control variate, mean − control = E[z_T] − m^∞ exactly; covariance − control misses
    # the G1⋄⋄ part of Cov(z_lin) (it is added back with the control), so compare totals
    ms = np.array([n * r.mean_minus_control.mean.ravel() for n, r in zip(widths, runs)])
    ses = np.array([n * r.mean_minus_control.stderr.ravel() for n, r in zip(widths, runs)])
    _assert_agrees("mean L=3", *_fit(ms, ses, widths), n0 * th.mean_correction.ravel())
    iu = np.triu_indices(4)
    cs = np.array([n * (r.covariance.mean - th.covariance_infinite).reshape(4, 4)[iu] for n, r in zip(widths, runs)])
    cses = np.array([n * r.covariance.stderr.reshape(4, 4)[iu] for n, r in zip(widths, runs)])
    _assert_agrees("covariance L=3", *_fit(cs, cses, widths), n0 * th.covariance_correction.reshape(4, 4)[iu])


@pytest.mark.slow
def test_gd_single_output(stats_L2):
    """n_L = 1 (the n_L traces of §4.5 at another value): first output's labels only."""
    s = attrs.evolve(stats_L2, width=1)
    eta = _eta(s, 1.0)
    th = solve(_net(64, n_out=1), GradientDescent(learning_rate=eta), XA, YA[:, :1], XB, statistics=s, warn_regime=False)
    widths = (64, 128, 256)
    runs = [train_ensemble(_net(n, n_out=1), XA, YA[:, :1], XB, learning_rate=eta, size=60_000, seed=51 + k,
                           control_variate=True) for k, n in enumerate(widths)]
    ms = np.array([n * r.mean_minus_control.mean.ravel() for n, r in zip(widths, runs)])
    ses = np.array([n * r.mean_minus_control.stderr.ravel() for n, r in zip(widths, runs)])
    _assert_agrees("mean n_L=1", *_fit(ms, ses, widths), s.fan_in * th.mean_correction.ravel())
    cs = np.array([n * r.covariance_minus_control.mean.ravel() for n, r in zip(widths, runs)])
    cses = np.array([n * r.covariance_minus_control.stderr.ravel() for n, r in zip(widths, runs)])
    _assert_agrees("covariance n_L=1", *_fit(cs, cses, widths), s.fan_in * th.covariance_correction.ravel())


# ---------------------------------------------------------------------------------------------
# finite number of steps: O(1/n) mean and covariance after T steps (docs/learning.md)


def _finite_steps_check(net_fn, stats, XA_, YA_, XB_, eta, T, widths, sizes, seed):
    """Fitted 1/n coefficients of E[z_T] − m_T and Cov z_T − Σ_T (control variate: the network's own
    initial output mapped by the infinite-width T-step solution) against the finite-T theory."""
    th = solve(net_fn(widths[0]), GradientDescent(learning_rate=eta, steps=T), XA_, YA_, XB_, statistics=stats,
               warn_regime=False)
    conv = solve(net_fn(widths[0]), GradientDescent(learning_rate=eta), XA_, YA_, XB_, statistics=stats, warn_regime=False)
    n0 = th.width  # solve rescales the corrections to net_fn(widths[0])
    runs = [train_ensemble(net_fn(n), XA_, YA_, XB_, learning_rate=eta, steps=T, size=m, seed=seed + k, control_variate=True)
            for k, (n, m) in enumerate(zip(widths, sizes))]
    NB, nL = th.mean.shape
    iu = np.triu_indices(NB * nL)
    flat = lambda C: C.reshape(NB * nL, NB * nL)[iu]  # noqa: E731
    ms = np.array([n * r.mean_minus_control.mean.ravel() for n, r in zip(widths, runs)])
    ses = np.array([n * r.mean_minus_control.stderr.ravel() for n, r in zip(widths, runs)])
    # the control's covariance P_T G P_Tᵀ already contains G1 (depth ≥ 3): compare totals
    cs = np.array([n * flat(r.covariance.mean - th.covariance_infinite) for n, r in zip(widths, runs)])
    cses = np.array([n * flat(r.covariance.stderr) for n, r in zip(widths, runs)])
    return dict(
        mean=(*_fit(ms, ses, widths), n0 * th.mean_correction.ravel(), ms, ses, n0 * conv.mean_correction.ravel()),
        cov=(*_fit(cs, cses, widths), n0 * flat(th.covariance_correction), cs, cses, n0 * flat(conv.covariance_correction)),
    )


def test_gd_finite_steps_mean_and_covariance_two_widths(stats_L2):
    """Depth 2, T = 4 steps at η = 0.5/λ_max (far from converged): the finite-T O(1/n) mean and
    covariance, fitted over two widths, within 4 SE; the converged (T = ∞) prediction is excluded."""
    eta = _eta(stats_L2, 0.5)
    out = _finite_steps_check(_net, stats_L2, XA, YA, XB, eta, 4, (64, 128), (40_000, 40_000), seed=61)
    for key, (a, se, t, ms, ses, t_conv) in out.items():
        _assert_agrees(f"finite-T {key}", a, se, t)
        assert _excluded(a, se, t_conv), key


_XA3 = np.array([[-1.2], [0.3], [1.0]])
_XB3 = np.array([[-0.4], [1.8]])
_YA3 = np.array([[0.6, -0.3], [-0.1, 0.2], [-0.4, 0.5]])


@pytest.mark.slow
@pytest.mark.parametrize("T", [6])
def test_gd_finite_steps_depth_3(T):
    """Depth 3 tanh, three training and two test points (one extrapolating), T steps at
    η = 0.5/λ_max: finite-T O(1/n) mean and covariance at widths 64 and 128."""
    net3 = lambda n: _net(n, depth=3)  # noqa: E731
    stats = GradientDescent(learning_rate=0.1).output_statistics(net3(64), np.vstack([_XA3, _XB3]), order="dntk")
    eta = 0.5 / np.linalg.eigvalsh(np.asarray(stats.Theta)[:3, :3])[-1]
    out = _finite_steps_check(net3, stats, _XA3, _YA3, _XB3, eta, T, (64, 128), (32_000, 12_000), seed=71)  # ≈ 6 min
    for key, (a, se, t, ms, ses, t_conv) in out.items():
        _assert_agrees(f"finite-T {key} (T = {T})", a, se, t)


# ---------------------------------------------------------------------------------------------
# a small step following a giant leap (book §∞.2.1): real networks doing one Newton step
# (learning-rate matrix Θ̃⁻¹ in sample space) and then `steps` GD steps


def _leap_check(stats, eta, steps, widths, size, seed):
    from pdlt_plugins.learning import GiantLeapSmallStep

    th = solve(_net(widths[0]), GiantLeapSmallStep(learning_rate=eta, steps=steps), XA, YA, XB, statistics=stats,
               warn_regime=False)
    n0 = th.width  # solve rescales the corrections to _net(widths[0])
    iu = np.triu_indices(4)
    ms, ses, cs, cses = [], [], [], []
    for k, n in enumerate(widths):
        r = train_ensemble(_net(n), XA, YA, XB, learning_rate=eta, steps=steps, newton_first=True, size=size,
                           seed=seed + k, control_variate=True)
        ms.append(n * r.mean_minus_control.mean.ravel())
        ses.append(n * r.mean_minus_control.stderr.ravel())
        cs.append(n * r.covariance_minus_control.mean.reshape(4, 4)[iu])
        cses.append(n * r.covariance_minus_control.stderr.reshape(4, 4)[iu])
    return (dict(mean=(*_fit(np.array(ms), np.array(ses), widths), n0 * th.mean_correction.ravel()),
                 cov=(*_fit(np.array(cs), np.array(cses), widths), n0 * th.covariance_correction.reshape(4, 4)[iu])),
            th)


def test_giant_leap_small_step_two_widths(stats_L2):
    """Depth 2: Newton step then one GD step at η = 0.5/λ_max, fitted 1/n coefficients within 4 SE;
    power: the converged-GD and the plain Newton-step predictions are excluded (algorithm dependence)."""
    from pdlt_plugins.learning import NewtonStep

    eta = _eta(stats_L2, 0.5)
    out, _ = _leap_check(stats_L2, eta, 1, (128, 256), 40_000, seed=91)
    n0 = stats_L2.fan_in
    gd = _theory(stats_L2, eta)
    newton = solve(_net(64), NewtonStep(), XA, YA, XB, statistics=stats_L2, warn_regime=False)
    iu = np.triu_indices(4)
    alternatives = {
        "mean": (n0 * gd.mean_correction.ravel(), n0 * newton.mean_correction.ravel()),
        "cov": (n0 * gd.covariance_correction.reshape(4, 4)[iu], n0 * newton.covariance_correction.reshape(4, 4)[iu]),
    }
    for key, (a, se, t) in out.items():
        _assert_agrees(f"giant leap + small step {key}", a, se, t)
    # each alternative is excluded by the mean or by the covariance (the Newton-step mean differs by
    # only ~1 SE of this two-width fit; its covariance differs by ~20 SE)
    for k, name in enumerate(("GD to convergence", "Newton step alone")):
        assert any(_excluded(out[key][0], out[key][1], alternatives[key][k]) for key in out), name


@pytest.mark.slow
@pytest.mark.parametrize("steps", [0, 1, 3])
def test_giant_leap_small_steps_four_widths(stats_L2, steps):
    """steps = 0 is the Newton step itself.  O(1/n²) terms are large at the extrapolation point x = 1.8
    (single widths n = 64, 128 are up to 10σ off there and converge to the prediction by n = 512), so
    the 1/n coefficient is fitted over n = 64…512."""
    eta = _eta(stats_L2, 0.5)
    out, _ = _leap_check(stats_L2, eta, steps, (64, 128, 256, 512), 60_000, seed=181 + 10 * steps)
    for key, (a, se, t) in out.items():
        _assert_agrees(f"giant leap + {steps} small steps {key}", a, se, t)
