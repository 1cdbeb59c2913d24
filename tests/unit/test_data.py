"""Unit tests of pdlt.data: the built-in data sets and the validated input loader."""

from __future__ import annotations

import math

import numpy as np
import pytest

import pdlt
from pdlt import data
from pdlt.errors import ParameterError


# ----------------------------------------------------------------------------- default_inputs
def test_default_inputs_shape_norm_angles():
    X = data.default_inputs()
    assert X.shape == (3, 2) and X.dtype == np.float64
    np.testing.assert_allclose((X**2).sum(axis=1) / X.shape[1], 1.0, rtol=0, atol=1e-15)
    cos = X @ X.T / 2.0
    np.testing.assert_allclose(cos[0, 1], math.cos(math.pi / 4), atol=1e-15)
    assert abs(cos[0, 2]) < 1e-15


def test_default_inputs_deterministic_and_read_only():
    a, b = data.default_inputs(), data.default_inputs()
    assert np.array_equal(a, b)
    with pytest.raises(ValueError):
        a[0, 0] = 5.0


@pytest.mark.parametrize("n, d", [(1, 2), (4, 2), (5, 3)])
def test_default_inputs_sizes(n, d):
    X = data.default_inputs(n, d)
    assert X.shape == (n, d)
    np.testing.assert_allclose((X**2).sum(axis=1), d, rtol=1e-14)
    assert np.all(X[:, 2:] == 0)
    assert len(np.unique(X.round(12), axis=0)) == n


@pytest.mark.parametrize("kwargs", [{"n_points": 0}, {"n_points": 2.0}, {"n_points": True}, {"input_dim": 1}, {"input_dim": "2"}])
def test_default_inputs_bad_arguments(kwargs):
    with pytest.raises(ParameterError, match="default_inputs"):
        data.default_inputs(**kwargs)


def test_default_inputs_run_through_flow():
    X = data.default_inputs()
    net = pdlt.MLP(input_dim=2, hidden_widths=[8], activation=pdlt.activation("relu"), c_w=2.0)
    f = pdlt.flow(net, X, order="leading")
    # |x|²/n_0 = 1: K^(1)_αα = C_b + C_W
    np.testing.assert_allclose(np.diag(f.layer(1).K), 2.0, rtol=1e-14)


# ----------------------------------------------------------------------------- regression
def test_regression_1d_shapes_target_and_determinism():
    X, y, Xt, yt = data.regression_1d(n_train=7, n_test=5)
    assert X.shape == (7, 1) and y.shape == (7, 1) and Xt.shape == (5, 1) and yt.shape == (5, 1)
    np.testing.assert_allclose(y[:, 0], np.sin(np.pi * X[:, 0]), rtol=0, atol=1e-15)
    np.testing.assert_allclose(Xt[:, 0], np.linspace(-1, 1, 5))
    np.testing.assert_allclose(yt[:, 0], np.sin(np.pi * Xt[:, 0]), atol=1e-15)
    assert np.all(np.abs(X) <= 1)
    again = data.regression_1d(n_train=7, n_test=5)
    assert all(np.array_equal(a, b) for a, b in zip((X, y, Xt, yt), again))
    assert not X.flags.writeable and not y.flags.writeable


def test_regression_1d_noise_and_seed():
    X0, y0, Xt0, yt0 = data.regression_1d(20, 4)
    X1, y1, Xt1, yt1 = data.regression_1d(20, 4, noise=0.1)
    assert np.array_equal(X0, X1) and np.array_equal(yt0, yt1)
    resid = y1 - y0
    assert 0.02 < float(np.std(resid)) < 0.3
    X2, *_ = data.regression_1d(20, 4, seed=1)
    assert not np.array_equal(X0, X2)


def test_regression_2d_shapes_and_target():
    X, y, Xt, yt = data.regression_2d(n_train=12, n_test=9)
    assert X.shape == (12, 2) and y.shape == (12, 1) and Xt.shape == (9, 2) and yt.shape == (9, 1)
    f = lambda x: np.sin(np.pi * x[:, 0]) * np.cos(0.5 * np.pi * x[:, 1])  # noqa: E731
    np.testing.assert_allclose(y[:, 0], f(X), atol=1e-15)
    np.testing.assert_allclose(yt[:, 0], f(Xt), atol=1e-15)
    assert all(np.array_equal(a, b) for a, b in zip((X, y, Xt, yt), data.regression_2d(12, 9)))


@pytest.mark.parametrize(
    "kwargs",
    [{"n_train": 0}, {"n_test": -1}, {"n_train": 2.5}, {"noise": -0.1}, {"noise": float("nan")}, {"seed": -1}, {"seed": 1.5}],
)
@pytest.mark.parametrize("fn", [data.regression_1d, data.regression_2d])
def test_regression_bad_arguments(fn, kwargs):
    with pytest.raises(ParameterError, match="regression"):
        fn(**kwargs)


# ----------------------------------------------------------------------------- load
def test_load_csv_with_header_and_comments(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("# my inputs\nx1,x2\n1.0, 0.0\n0.6,0.8\n\n")
    X = data.load(p)
    np.testing.assert_array_equal(X, [[1.0, 0.0], [0.6, 0.8]])
    assert X.dtype == np.float64 and not X.flags.writeable
    assert np.array_equal(data.load(str(p)), X)


def test_load_whitespace_text_and_single_column(tmp_path):
    p = tmp_path / "x.txt"
    p.write_text("1 2 3\n4 5 6\n")
    assert data.load(p).shape == (2, 3)
    q = tmp_path / "col.csv"
    q.write_text("0.5\n-0.5\n1.5\n")
    assert data.load(q).shape == (3, 1)


def test_load_npy_and_npz(tmp_path):
    A = np.arange(6.0).reshape(3, 2)
    np.save(tmp_path / "a.npy", A)
    np.testing.assert_array_equal(data.load(tmp_path / "a.npy"), A)
    np.save(tmp_path / "v.npy", np.arange(4))  # integer 1-D: one column of floats
    v = data.load(tmp_path / "v.npy")
    assert v.shape == (4, 1) and v.dtype == np.float64
    np.savez(tmp_path / "named.npz", X=A, y=np.zeros(3))
    np.testing.assert_array_equal(data.load(tmp_path / "named.npz"), A)
    np.savez(tmp_path / "single.npz", inputs=A)
    np.testing.assert_array_equal(data.load(tmp_path / "single.npz"), A)


def test_loaded_inputs_run_through_flow(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("1,0,0\n0,1,0\n")
    X = data.load(p)
    net = pdlt.MLP(input_dim=3, hidden_widths=[4], activation=pdlt.activation("tanh"))
    assert pdlt.flow(net, X, order="leading")[-1].K.shape == (2, 2)


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("nan.csv", "1,0\nnan,1\n", "finite"),
        ("inf.csv", "1,inf\n", "finite"),
        ("text.csv", "1,0\n2,abc\n", "non-numeric"),
        ("ragged.csv", "1,0\n2\n", "different lengths"),
        ("empty.csv", "# nothing\n\n", "no data"),
        ("header_only.csv", "a,b\n", "no numeric rows"),
        ("x.json", "[[1, 2]]", "unsupported extension"),
    ],
)
def test_load_bad_text_files(tmp_path, name, content, match):
    p = tmp_path / name
    p.write_text(content)
    with pytest.raises(ParameterError, match=match) as info:
        data.load(p)
    assert name in str(info.value)


def test_load_bad_binary_files(tmp_path):
    np.save(tmp_path / "cube.npy", np.zeros((2, 2, 2)))
    with pytest.raises(ParameterError, match=r"2-D array.*\(2, 2, 2\)"):
        data.load(tmp_path / "cube.npy")
    np.save(tmp_path / "empty.npy", np.zeros((0, 2)))
    with pytest.raises(ParameterError, match="N >= 1"):
        data.load(tmp_path / "empty.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ParameterError, match="could not be read"):
        data.load(tmp_path / "obj.npy")  # pickles are refused
    np.save(tmp_path / "str.npy", np.array([["a", "b"]]))
    with pytest.raises(ParameterError, match="real numbers"):
        data.load(tmp_path / "str.npy")
    np.savez(tmp_path / "many.npz", a=np.zeros((2, 2)), b=np.zeros((2, 2)))
    with pytest.raises(ParameterError, match="name the inputs 'X'"):
        data.load(tmp_path / "many.npz")
    (tmp_path / "garbage.npy").write_bytes(b"not a numpy file")
    with pytest.raises(ParameterError, match="could not be read"):
        data.load(tmp_path / "garbage.npy")


def test_load_missing_file_and_bad_path(tmp_path):
    with pytest.raises(ParameterError, match="does not exist"):
        data.load(tmp_path / "nope.csv")
    with pytest.raises(ParameterError, match="does not exist"):
        data.load(tmp_path)  # a directory
    with pytest.raises(ParameterError, match="file path"):
        data.load(3.5)
    assert issubclass(ParameterError, ValueError)


# ----------------------------------------------------------------------------- grid design and diabetes
def test_regression_1d_grid_design():
    from pdlt import data

    Xa, ya, Xb, yb = data.regression_1d(n_train=4, n_test=3, design="grid")
    np.testing.assert_allclose(Xa[:, 0], [-0.75, -0.25, 0.25, 0.75])
    np.testing.assert_allclose(ya[:, 0], np.sin(np.pi * Xa[:, 0]))
    np.testing.assert_allclose(Xb[:, 0], [-1.0, 0.0, 1.0])
    with pytest.raises(pdlt.ParameterError, match="'design'"):
        data.regression_1d(design="sobol")


def test_diabetes_is_a_standardised_fixed_split():
    pytest.importorskip("sklearn")
    from pdlt import data

    Xa, ya, Xb, yb = data.diabetes(n_train=30, n_test=12)
    assert Xa.shape == (30, 10) and ya.shape == (30, 1) and Xb.shape == (12, 10) and yb.shape == (12, 1)
    assert not Xa.flags.writeable and np.all(np.isfinite(Xa))
    again = data.diabetes(n_train=30, n_test=12)
    np.testing.assert_array_equal(again[0], Xa)
    full = np.vstack(data.diabetes(n_train=400, n_test=42)[::2])
    np.testing.assert_allclose(full.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(full.std(axis=0), 1.0, rtol=1e-12)
    assert data.diabetes(5, 5, features=3)[0].shape == (5, 3)
    with pytest.raises(pdlt.ParameterError, match="442"):
        data.diabetes(n_train=400, n_test=100)
    with pytest.raises(pdlt.ParameterError, match="'features'"):
        data.diabetes(features=11)


def test_diabetes_without_sklearn(monkeypatch):
    import builtins

    from pdlt import data

    real_import = builtins.__import__

    def fake(name, *args, **kwargs):
        if name.startswith("sklearn"):
            raise ImportError("no sklearn")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(pdlt.MissingDependencyError, match="scikit-learn"):
        data.diabetes()
