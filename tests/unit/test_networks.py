"""Unit tests of the real-network engine: pdlt.networks, pdlt.ensemble, pdlt.progress.

The NTK forward equation is checked against an independent computation (explicit parameter
Jacobians by complex step / central differences of a plain single-network forward pass), and
the vectorised ensemble estimators against brute-force loops over neuron pairs on exactly the
same networks.
"""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest

from pdlt.activation import Activation
from pdlt.ensemble import (
    MIN_BATCHES,
    EnsembleStatistics,
    Estimate,
    output_moments,
    sample,
    sample_chunks,
)
from pdlt.errors import ParameterError
from pdlt.networks import LayerSample, NetworkParameters, mlp_apply, mlp_forward, sample_parameters
from pdlt.progress import Progress
from pdlt_plugins.architectures import MLP

try:  # the built-in activation plugins, when present
    from pdlt_plugins.activations import ReLU, Tanh

    _RELU, _TANH = ReLU(), Tanh()
except (ImportError, AttributeError, TypeError):  # minimal stand-ins

    class _Tanh(Activation):
        name = "test_tanh"

        def __call__(self, z):
            return np.tanh(z)

        def _derivative(self, z, order):
            t = np.tanh(z)
            if order == 1:
                return 1 - t**2
            raise NotImplementedError

    class _ReLU(Activation):
        name = "test_relu"
        max_derivative = 1

        def __call__(self, z):
            return np.maximum(z, 0.0)

        def _derivative(self, z, order):
            return (z > 0).astype(float)

    _RELU, _TANH = _ReLU(), _Tanh()


def _net(act, widths=(3, 4, 5, 3), **kw):
    params = dict(c_b=(0.1, 0.2, 0.3), c_w=(1.2, 1.5, 0.9), lambda_b=(1.0, 0.5, 2.0), lambda_w=(1.5, 2.0, 0.7))
    params.update(kw)
    return MLP(input_dim=widths[0], hidden_widths=widths[1:-1], output_dim=widths[-1], activation=act, **params)


X2 = np.array([[0.9, -0.4, 0.3], [-0.2, 0.7, 1.1]])


# ---------------------------------------------------------------------------------------------
# independent reference: one network, parameters as a flat vector, Jacobian by perturbation


def _flatten(params: NetworkParameters, s: int) -> np.ndarray:
    parts = []
    for W, b in zip(params.weights, params.biases):
        parts += [W[s].ravel(), b[s].ravel()]
    return np.concatenate(parts)


def _reference_forward(theta, widths, X, sigma):
    """z^(ℓ) (shape (n_ℓ, N)) of one network for every layer; plain loops, any dtype."""
    out, pos, a = [], 0, X.T.astype(theta.dtype)
    for ell in range(1, len(widths)):
        n_in, n_out = widths[ell - 1], widths[ell]
        W = theta[pos : pos + n_out * n_in].reshape(n_out, n_in)
        pos += n_out * n_in
        b = theta[pos : pos + n_out]
        pos += n_out
        z = W @ a + b[:, None]
        out.append(z)
        a = sigma(z)
    return out


def _lambda_vector(net) -> np.ndarray:
    widths, lam = net.widths, []
    for ell in range(1, len(widths)):
        n_in, n_out = widths[ell - 1], widths[ell]
        lam += [np.full(n_out * n_in, net.lambda_W[ell - 1] / n_in), np.full(n_out, net.lambda_B[ell - 1])]
    return np.concatenate(lam)


def _jacobian_ntk(net, theta, X, sigma, method):
    P = theta.size
    cols = []
    for mu in range(P):
        if method == "complex":
            h = 1e-30
            t = theta.astype(complex)
            t[mu] += 1j * h
            cols.append([z.imag / h for z in _reference_forward(t, net.widths, X, sigma)])
        else:
            h = 1e-6
            tp, tm = theta.copy(), theta.copy()
            tp[mu] += h
            tm[mu] -= h
            zp = _reference_forward(tp, net.widths, X, sigma)
            zm = _reference_forward(tm, net.widths, X, sigma)
            cols.append([(a - b) / (2 * h) for a, b in zip(zp, zm)])
    lam = _lambda_vector(net)
    H = []
    for ell in range(len(net.widths) - 1):
        J = np.stack([c[ell] for c in cols], axis=-1)  # (n_ℓ, N, P)
        H.append(np.einsum("iap,p,jbp->ijab", J, lam, J))
    return H


@pytest.mark.parametrize(
    "act, sigma, method, tol",
    [(_TANH, np.tanh, "complex", 1e-12), (_RELU, lambda z: np.maximum(z, 0.0), "central", 1e-7)],
    ids=["tanh-complex-step", "relu-central-difference"],
)
def test_ntk_forward_equation_matches_parameter_jacobian(act, sigma, method, tol):
    net = _net(act)
    layers, params = mlp_forward(net, X2, 3, np.random.default_rng(11), return_params=True)
    for s in range(params.size):
        theta = _flatten(params, s)
        z_ref = _reference_forward(theta, net.widths, X2, sigma)
        H_ref = _jacobian_ntk(net, theta, X2, sigma, method)
        for ell, layer in enumerate(layers):
            np.testing.assert_allclose(layer.z[s], z_ref[ell], rtol=0, atol=1e-12)
            scale = np.abs(H_ref[ell]).max()
            np.testing.assert_allclose(layer.H[s], H_ref[ell], rtol=0, atol=tol * scale, err_msg=f"layer {ell + 1}")


def test_forward_shapes_and_param_round_trip():
    net = _net(_TANH, widths=(3, 4, 6, 2))
    layers, params = mlp_forward(net, X2, 7, np.random.default_rng(0), return_params=True)
    assert len(layers) == net.depth == params.depth == 3
    for ell, layer in enumerate(layers, start=1):
        n = net.widths[ell]
        assert isinstance(layer, LayerSample)
        assert layer.z.shape == (7, n, 2)
        assert layer.H.shape == (7, n, n, 2, 2)
        # Ĥ_{i1i2;α1α2} = Ĥ_{i2i1;α2α1}
        np.testing.assert_allclose(layer.H, layer.H.transpose(0, 2, 1, 4, 3), atol=1e-12)
    assert [W.shape for W in params.weights] == [(7, 4, 3), (7, 6, 4), (7, 2, 6)]
    again = mlp_apply(net, params, X2)
    for a, b in zip(layers, again):
        np.testing.assert_array_equal(a.z, b.z)
        np.testing.assert_array_equal(a.H, b.H)
    # the plugin's sample_forward is the same engine, and ntk=False skips the NTK
    via_plugin = net.sample_forward(X2, 7, np.random.default_rng(0), ntk=False)
    np.testing.assert_array_equal(via_plugin[-1].z, layers[-1].z)
    assert via_plugin[-1].H is None


def test_parameter_distribution():
    net = _net(_TANH, widths=(3, 4, 5, 3))
    params = sample_parameters(net, 4000, np.random.default_rng(5))
    for ell, (W, b) in enumerate(zip(params.weights, params.biases)):
        n_in = net.widths[ell]
        # relative standard error of a variance from m draws is sqrt(2/m)
        np.testing.assert_allclose(W.var() * n_in / net.C_W[ell], 1.0, atol=4 * np.sqrt(2 / W.size))
        np.testing.assert_allclose(b.var() / net.C_b[ell], 1.0, atol=4 * np.sqrt(2 / b.size))


def test_bad_inputs_raise():
    net = _net(_TANH)
    with pytest.raises(ParameterError, match="'X' parameter"):
        mlp_forward(net, np.ones((2, 4)), 3, np.random.default_rng(0))
    with pytest.raises(ParameterError, match="'size' parameter"):
        mlp_forward(net, X2, 0, np.random.default_rng(0))
    with pytest.raises(ParameterError, match="'size' parameter"):
        sample(net, X2, 1)
    with pytest.raises(ParameterError, match="'seed' parameter"):
        sample(net, X2, 10, seed=-1)
    with pytest.raises(ParameterError, match="'chunk_size' parameter"):
        sample(net, X2, 10, chunk_size=0)


# ---------------------------------------------------------------------------------------------
# vectorised estimators vs brute force on the same networks


def _brute_force(layers, fan_in):
    """All estimators by explicit loops over networks and neuron pairs (tiny sizes only)."""
    z = np.concatenate([l.z for l in layers])
    H = np.concatenate([l.H for l in layers])
    S, n, N = z.shape
    acc = {k: [] for k in ("zz", "hd", "zzzz1", "zzzz2", "hh1", "hh2", "hz1", "hz2", "B", "F")}
    for s in range(S):
        zz = [np.outer(z[s, i], z[s, i]) for i in range(n)]
        hd = [H[s, i, i] for i in range(n)]
        acc["zz"].append(np.mean(zz, axis=0))
        acc["hd"].append(np.mean(hd, axis=0))
        acc["zzzz1"].append(np.mean([np.multiply.outer(a, a) for a in zz], axis=0))
        acc["hh1"].append(np.mean([np.multiply.outer(a, a) for a in hd], axis=0))
        acc["hz1"].append(np.mean([np.multiply.outer(a, b) for a, b in zip(hd, zz)], axis=0))
        pairs = [(i, k) for i in range(n) for k in range(n) if i != k]
        acc["zzzz2"].append(np.mean([np.multiply.outer(zz[i], zz[k]) for i, k in pairs], axis=0))
        acc["hh2"].append(np.mean([np.multiply.outer(hd[i], hd[k]) for i, k in pairs], axis=0))
        acc["hz2"].append(np.mean([np.multiply.outer(hd[i], zz[k]) for i, k in pairs], axis=0))
        b = np.zeros((N,) * 4)
        f = np.zeros((N,) * 4)
        for i, k in pairs:
            for p, q, r, t in itertools.product(range(N), repeat=4):
                b[p, q, r, t] += H[s, i, k, p, r] * H[s, i, k, q, t]
                f[p, q, r, t] += H[s, i, k, p, r] * z[s, i, q] * z[s, k, t]
        acc["B"].append(b / len(pairs))
        acc["F"].append(f / len(pairs))
    m = {k: np.mean(v, axis=0) for k, v in acc.items()}
    K, T = m["zz"], m["hd"]
    outer = np.multiply.outer
    wick = outer(K, K) + np.einsum("ac,bd->abcd", K, K) + np.einsum("ad,bc->abcd", K, K)
    return {
        "K": K,
        "Theta": T,
        "V": fan_in * (m["zzzz2"] - outer(K, K)),
        "V_one_neuron": fan_in * (m["zzzz1"] - wick),
        "A": fan_in * (m["hh2"] - outer(T, T)),
        "A_one_neuron": fan_in * (m["hh1"] - outer(T, T)),
        "B": fan_in * m["B"],
        "D": fan_in * (m["hz2"] - outer(T, K)),
        "D_one_neuron": fan_in * (m["hz1"] - outer(T, K)),
        "F": fan_in * m["F"],
    }


def test_estimators_match_brute_force_on_same_networks():
    net = _net(_TANH, widths=(3, 3, 4, 3))
    size, seed = 60, 3
    stats = sample(net, X2, size, seed=seed)
    chunks = list(sample_chunks(net, X2, size, seed=seed))
    assert sum(c[0].z.shape[0] for c in chunks) == size and len(chunks) == stats.n_batches == MIN_BATCHES
    for ell in range(1, net.depth + 1):
        ref = _brute_force([c[ell - 1] for c in chunks], net.widths[ell - 1])
        got = stats.layer(ell)
        for name, value in ref.items():
            np.testing.assert_allclose(
                getattr(got, name).mean, value, rtol=1e-10, atol=1e-12, err_msg=f"layer {ell} {name}"
            )


def test_statistics_container_and_npz_round_trip(tmp_path):
    net = _net(_TANH, widths=(3, 3, 4, 1))
    stats = sample(net, X2, 200, seed=4)
    assert len(stats) == 3 and stats[0] is stats.layer(1) and [s.ell for s in stats] == [1, 2, 3]
    with pytest.raises(ParameterError):
        stats.layer(0)
    last = stats.layer(3)
    assert last.fan_in == 4 and last.width == 1
    # width-1 layer: no pair of distinct neurons
    assert np.isnan(last.V.mean).all() and np.isnan(last.B.mean).all()
    assert np.isfinite(last.V_one_neuron.mean).all() and np.isfinite(last.A_one_neuron.mean).all()
    assert stats.layer(2).K.mean.flags.writeable is False
    path = tmp_path / "stats.npz"
    stats.to_npz(path)
    back = EnsembleStatistics.from_npz(path)
    assert back == stats
    no_ntk = sample(net, X2, 50, seed=4, ntk=False)
    assert no_ntk.layer(2).Theta is None
    no_ntk.to_npz(path)
    assert EnsembleStatistics.from_npz(path) == no_ntk


def test_sampling_is_deterministic_and_chunk_plan_bounded():
    net = _net(_TANH)
    a = sample(net, X2, 300, seed=9)
    b = sample(net, X2, 300, seed=9)
    assert a == b
    c = sample(net, X2, 300, seed=10)
    assert not np.array_equal(a.layer(2).K.mean, c.layer(2).K.mean)
    # memory bound forces more, smaller chunks
    tiny = list(sample_chunks(net, X2, 300, seed=9, max_memory_mb=0.002))
    assert len(tiny) > MIN_BATCHES
    assert max(ch[0].z.shape[0] for ch in tiny) <= -(-300 // len(tiny))
    few = list(sample_chunks(net, X2, 10, seed=9))
    assert len(few) == 10


def test_estimate_helpers():
    e = Estimate(mean=[1.0, 2.0, 3.0, np.nan], stderr=[0.5, 0.0, 0.0, 1.0])
    z = e.z_score([0.0, 2.0, 4.0, 0.0])
    assert z[0] == 2.0 and z[1] == 0.0 and z[2] == -np.inf and np.isnan(z[3])
    assert e[:2].agrees([0.0, 2.0], k=2.0) and not e[:2].agrees([0.0, 2.0], k=1.9)
    with pytest.raises(ParameterError):
        Estimate(mean=[1.0], stderr=[1.0, 2.0])


def test_standard_errors_are_calibrated():
    """Reported errors match the spread over independent seeds (batch means and per-network)."""
    net = MLP(input_dim=2, hidden_widths=(4,), output_dim=3, activation=_TANH, c_b=0.1, c_w=1.5)
    x = np.array([[1.0, -0.5]])
    runs = [sample(net, x, 1000, seed=s) for s in range(24)]
    for name in ("K", "V", "Theta", "A", "B", "D", "F"):
        means = np.array([getattr(r.layer(2), name).mean.ravel()[0] for r in runs])
        ses = np.array([getattr(r.layer(2), name).stderr.ravel()[0] for r in runs])
        ratio = means.std(ddof=1) / np.sqrt(np.mean(ses**2))
        # 24 seeds: the spread itself is known to ~15 %
        assert 0.6 < ratio < 1.6, (name, ratio)


def test_output_moments_match_brute_force():
    net = _net(_TANH, widths=(3, 4, 5, 3))
    mom = output_moments(net, X2, 40, seed=2, max_order=4)
    chunks = list(sample_chunks(net, X2, 40, seed=2, ntk=False))
    for ell in range(1, net.depth + 1):
        z = np.concatenate([c[ell - 1].z for c in chunks])
        n = z.shape[1]
        got = mom.layer(ell)
        for m in range(1, 5):
            np.testing.assert_allclose(got.even.mean[m - 1], np.mean(z ** (2 * m), axis=(0, 1)), rtol=1e-12)
            if m > n:
                assert np.isnan(got.distinct.mean[m - 1]).all()
                continue
            subsets = list(itertools.combinations(range(n), m))
            ref = np.mean([np.prod(z[:, list(c), :] ** 2, axis=1) for c in subsets], axis=(0, 1))
            np.testing.assert_allclose(got.distinct.mean[m - 1], ref, rtol=1e-10)


# ---------------------------------------------------------------------------------------------
# progress


class _FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_progress_silent_unless_tty_or_forced():
    buf = io.StringIO()
    with Progress(10, stream=buf) as p:
        p.update(10)
    assert buf.getvalue() == ""
    buf = io.StringIO()
    with Progress(10, enabled=False, stream=_FakeTTY()) as p:
        p.update(10)
    tty = _FakeTTY()
    with Progress(40000, stream=tty, min_interval=0) as p:
        p.update(12000)
    out = tty.getvalue()
    assert out.startswith("\rensemble: 12000/40000 networks (30%) ") and out.endswith(" s\n")


def test_progress_forced_from_sample(capsys):
    net = _net(_TANH)
    sample(net, X2, 20, progress=True)
    err = capsys.readouterr().err
    assert "ensemble: 20/20 networks (100%)" in err
    sample(net, X2, 20, progress=False)
    assert capsys.readouterr().err == ""
