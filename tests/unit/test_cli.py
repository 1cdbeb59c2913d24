"""Unit tests of the command line (pdlt.cli): every command, --json, --config, and error exits."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import pdlt
from pdlt import cli, data
from pdlt.flow import Flow

# small and fast network options shared by the tests
SMALL = ["--depth", "2", "--width", "6"]


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys, *argv):
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out), err


# ----------------------------------------------------------------------------- default job
def test_no_arguments_runs_the_default_job(capsys, monkeypatch):
    monkeypatch.setenv(cli.ENSEMBLE_SIZE_ENV, "200")
    code, out, err = run(capsys)
    assert code == 0, err
    assert "criticality" in out and "universality class" in out and "K*=0" in out
    assert "RG flow" in out and "V_0000/(n K_00²)" in out and "K_01" in out
    assert "theory vs real networks" in out and "200 networks" in out
    for label in ("K_00", "K_01", "Θ_00", "V_0000"):
        assert label in out
    assert "± " in out and "max |z|" in out
    # the flow table has one row per layer: ℓ = 1..4
    rows = [ln.split() for ln in out.splitlines() if ln.strip()[:1].isdigit() and len(ln.split()) == 6]
    assert [r[0] for r in rows] == ["1", "2", "3", "4"]
    assert "ensemble: 200/200 networks" in err  # progress on stderr


def test_default_job_theory_matches_api(capsys, monkeypatch):
    monkeypatch.setenv(cli.ENSEMBLE_SIZE_ENV, "100")
    d, _ = run_json(capsys, "--no-progress")
    assert d["command"] == "run"
    assert d["criticality"]["universality_class"] == "K*=0"
    assert d["network"]["widths"] == [2, 32, 32, 32, 32]
    net = pdlt.MLP(input_dim=2, hidden_widths=[32] * 3, output_dim=32, activation=pdlt.activation("tanh"), c_b=0.0, c_w=1.0)
    f = pdlt.flow(net, data.default_inputs(), order="leading")
    np.testing.assert_allclose(d["layers"][-1]["K"], f[-1].K, rtol=1e-12)
    q = d["comparison"]["quantities"]
    assert d["comparison"]["ensemble"]["size"] == 100
    assert set(q) == {"K", "Theta", "V", "A", "B", "D", "F"}
    assert np.asarray(q["V"]["z"], dtype=float).shape == (3, 3, 3, 3)


def test_run_options_and_explicit_initialisation(capsys):
    d, err = run_json(capsys, "run", "--activation", "relu", *SMALL, "--size", "50", "--seed", "3", "--no-progress")
    assert d["network"]["c_w"] == pytest.approx(2.0)  # tuned to criticality by default
    assert d["comparison"]["ensemble"]["seed"] == 3 and err == ""
    d, _ = run_json(capsys, "run", "--activation", "relu", *SMALL, "--c-w", "1.5", "--size", "50", "--no-progress")
    assert d["network"]["c_w"] == 1.5


def test_run_without_criticality_keeps_defaults(capsys):
    code, out, err = run(capsys, "run", "--activation", "sigmoid", *SMALL, "--size", "40", "--no-progress")
    assert code == 0, err
    assert "C_b = 0, C_W = 1" in out


# ----------------------------------------------------------------------------- version / help
def test_version(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"pdlt {pdlt.__version__}"


def test_help(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for command in ("run", "criticality", "flow", "compare", "plugins"):
        assert command in out


def test_python_dash_m():
    res = subprocess.run([sys.executable, "-m", "pdlt", "--version"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == f"pdlt {pdlt.__version__}"


# ----------------------------------------------------------------------------- criticality
def test_criticality_text_and_json(capsys):
    code, out, _ = run(capsys, "criticality", "relu")
    assert code == 0 and "scale-invariant" in out
    d, _ = run_json(capsys, "criticality", "leaky_relu", "--param", "slope=0.5")
    assert d["universality_class"] == "scale-invariant"
    assert d["c_w"] == pytest.approx(2.0 / (1.0 + 0.25))


def test_criticality_bad_parameter(capsys):
    code, _, err = run(capsys, "criticality", "leaky_relu", "-p", "slop=0.5")
    assert code == 2 and "error:" in err and "slope" in err
    code, _, err = run(capsys, "criticality", "leaky_relu", "-p", "slope")
    assert code == 2 and "KEY=VALUE" in err


# ----------------------------------------------------------------------------- flow
def test_flow_text(capsys):
    code, out, _ = run(capsys, "flow", *SMALL)
    assert code == 0
    assert "order full" in out and "V_0000/(n K_00²)" in out
    code, out, _ = run(capsys, "flow", *SMALL, "--leading")
    assert code == 0 and "leading" in out and "V_0000" not in out


def test_flow_json_matches_api(capsys):
    d, _ = run_json(capsys, "flow", "--activation", "erf", "--widths", "5,7", "--c-b", "0.1", "--c-w", "1,1.5,2",
                    "--lambda-b", "0.5", "--lambda-w", "2", "--output-dim", "3")
    net = pdlt.MLP(input_dim=2, hidden_widths=[5, 7], output_dim=3, activation=pdlt.activation("erf"),
                   c_b=0.1, c_w=[1, 1.5, 2], lambda_b=0.5, lambda_w=2.0)
    f = pdlt.flow(net, data.default_inputs())
    assert d["network"]["widths"] == [2, 5, 7, 3] and d["order"] == "full"
    assert len(d["layers"]) == 3
    for got, s in zip(d["layers"], f):
        for name in ("K", "Theta", "V", "G1", "H1", "A", "B", "D", "F"):
            np.testing.assert_allclose(np.asarray(got[name]), getattr(s, name), rtol=1e-12, atol=1e-15)
        assert got["fan_in"] == s.fan_in
    d, _ = run_json(capsys, "flow", *SMALL, "--leading")
    assert d["order"] == "leading" and "V" not in d["layers"][-1]


def test_flow_critical(capsys):
    d, _ = run_json(capsys, "flow", "--activation", "relu", *SMALL, "--critical", "--leading")
    assert d["network"]["c_w"] == pytest.approx(2.0) and d["network"]["c_b"] == 0.0
    K = [np.asarray(layer["K"]) for layer in d["layers"]]
    np.testing.assert_allclose(np.diag(K[-1]), np.diag(K[0]), rtol=1e-10)  # scale-invariant fixed line


def test_flow_save(tmp_path, capsys):
    out = tmp_path / "f.npz"
    code, _, err = run(capsys, "flow", *SMALL, "--save", str(out))
    assert code == 0 and "saved" in err
    f = Flow.from_npz(out)
    assert len(f) == 2 and f[-1].V.shape == (3, 3, 3, 3)
    code, _, err = run(capsys, "flow", *SMALL, "--save", str(tmp_path / "no" / "such" / "dir.npz"))
    assert code == 2 and "Could not save" in err


def test_flow_inputs_file(tmp_path, capsys):
    p = tmp_path / "x.csv"
    p.write_text("x,y,z\n1,0,0\n0,1,0\n")
    d, _ = run_json(capsys, "flow", *SMALL, "--inputs", str(p), "--leading")
    assert d["network"]["widths"][0] == 3 and np.asarray(d["inputs"]).shape == (2, 3)
    np.save(tmp_path / "x.npy", np.eye(4))
    d, _ = run_json(capsys, "flow", *SMALL, "-i", str(tmp_path / "x.npy"), "--leading")
    assert np.asarray(d["layers"][0]["K"]).shape == (4, 4)


# ----------------------------------------------------------------------------- compare
def test_compare_json(capsys):
    d, err = run_json(capsys, "compare", *SMALL, "--size", "200", "--seed", "1")
    assert "ensemble: 200/200" in err
    q = d["quantities"]
    assert set(q) == {"K", "Theta", "V", "A", "B", "D", "F"}
    for name, entry in q.items():
        mean, se, th, z = (np.asarray(entry[k], dtype=float) for k in ("mean", "stderr", "theory", "z"))
        assert mean.shape == se.shape == th.shape == z.shape
        ok = se > 0
        np.testing.assert_allclose(z[ok], ((mean - th) / se)[ok], rtol=1e-10, atol=1e-12)
    assert d["layer"] == 2 and d["ensemble"]["size"] == 200


def test_compare_seeded_and_text(capsys):
    a, _ = run_json(capsys, "compare", *SMALL, "--size", "100", "--no-progress")
    b, _ = run_json(capsys, "compare", *SMALL, "--size", "100", "--no-progress")
    assert a["quantities"]["K"]["mean"] == b["quantities"]["K"]["mean"]
    code, out, err = run(capsys, "compare", *SMALL, "--size", "100", "--no-progress")
    assert code == 0 and err == ""
    for label in ("K_00", "Θ_01", "V_0000", "A_0011", "B_0101", "D_0000", "F_0000", "max |z|"):
        assert label in out


def test_compare_one_output_uses_one_neuron_combinations(capsys):
    d, _ = run_json(capsys, "compare", *SMALL, "--output-dim", "1", "--size", "100", "--no-progress")
    assert set(d["quantities"]) == {"K", "Theta", "V_one_neuron", "A_one_neuron", "D_one_neuron"}
    code, out, _ = run(capsys, "compare", *SMALL, "--output-dim", "1", "--size", "100", "--no-progress")
    assert code == 0 and "B and F need --output-dim >= 2" in out


def test_compare_save(tmp_path, capsys):
    from pdlt.ensemble import EnsembleStatistics

    code, _, _ = run(capsys, "compare", *SMALL, "--size", "100", "--no-progress", "--save", str(tmp_path / "e.npz"))
    assert code == 0
    assert EnsembleStatistics.from_npz(tmp_path / "e.npz").size == 100


def test_ensemble_size_env(capsys, monkeypatch):
    monkeypatch.setenv(cli.ENSEMBLE_SIZE_ENV, "60")
    d, _ = run_json(capsys, "compare", *SMALL, "--no-progress")
    assert d["ensemble"]["size"] == 60
    d, _ = run_json(capsys, "compare", *SMALL, "--no-progress", "--size", "70")
    assert d["ensemble"]["size"] == 70
    monkeypatch.setenv(cli.ENSEMBLE_SIZE_ENV, "many")
    code, _, err = run(capsys, "compare", *SMALL)
    assert code == 2 and cli.ENSEMBLE_SIZE_ENV in err


# ----------------------------------------------------------------------------- config files
def test_toml_config(tmp_path, capsys):
    (tmp_path / "pts.csv").write_text("1,0\n0.6,0.8\n")
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        'activation = "leaky_relu"\nwidths = [4, 5]\ncritical = true\ninputs = "pts.csv"\n'
        "[params]\nslope = 0.5\n[compare]\nsize = 80\nprogress = false\n"
    )
    d, _ = run_json(capsys, "flow", "--config", str(cfg), "--leading")
    assert d["network"]["widths"] == [2, 4, 5, 5]
    assert d["network"]["activation_params"] == {"slope": 0.5}
    assert d["network"]["c_w"] == pytest.approx(1.6)
    assert np.asarray(d["inputs"]).shape == (2, 2)  # path relative to the config file
    d, err = run_json(capsys, "compare", "--config", str(cfg))
    assert d["ensemble"]["size"] == 80 and err == ""


def test_json_config_and_command_line_wins(tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"activation": "erf", "depth": 3, "width": 4, "c_w": [1, 1, 1.5], "leading": True,
                               "inputs": [[1.0, 0.0, 0.0]]}))
    d, _ = run_json(capsys, "flow", "-c", str(cfg))
    assert d["network"]["widths"] == [3, 4, 4, 4] and d["network"]["c_w"] == [1, 1, 1.5] and d["order"] == "leading"
    d, _ = run_json(capsys, "flow", "-c", str(cfg), "--widths", "6", "--c-w", "2", "--activation", "tanh")
    assert d["network"]["widths"] == [3, 6, 6] and d["network"]["c_w"] == 2.0 and d["network"]["activation"] == "tanh"


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("typo.json", '{"activaton": "erf"}', "Did you mean 'activation'"),
        ("bad.json", "{not json", "could not be parsed"),
        ("bad.toml", "depth = = 3", "could not be parsed"),
        ("list.json", "[1, 2]", "table/object"),
        ("type.json", '{"depth": "deep"}', "'depth'.*positive integer"),
        ("size.json", '{"size": 10}', "unknown option 'size' for `pdlt flow`"),
        ("c.yaml", "depth: 3", ".toml or .json"),
        ("rows.json", '{"inputs": [[1, "a"], [2]]}', "equal-length rows"),
        ("nan.json", '{"inputs": [[1, 0], [0, 1e999]]}', "finite"),
    ],
)
def test_bad_config(tmp_path, capsys, name, content, match):
    cfg = tmp_path / name
    cfg.write_text(content)
    code, _, err = run(capsys, "flow", "--config", str(cfg))
    assert code == 2
    assert err.startswith("error: ")
    assert __import__("re").search(match, err), err


def test_missing_config(tmp_path, capsys):
    code, _, err = run(capsys, "flow", "--config", str(tmp_path / "none.toml"))
    assert code == 2 and "does not exist" in err


# ----------------------------------------------------------------------------- plugins
def test_plugins_text_and_json(capsys):
    code, out, _ = run(capsys, "plugins")
    assert code == 0
    for heading in ("activations", "architectures", "learning algorithms", "observables"):
        assert heading in out
    assert "tanh" in out and "pdlt_plugins.activations" in out
    d, _ = run_json(capsys, "plugins")
    names = {e["name"]: e for e in d["activations"]}
    assert set(names) == set(pdlt.plugins.available("activation"))
    assert names["relu"]["provider"] == "pdlt_plugins.activations"
    assert any(e["name"] == "mlp" for e in d["architectures"])
    assert "learning_algorithms" in d and "observables" in d


# ----------------------------------------------------------------------------- errors
def test_unknown_activation_suggests(capsys):
    code, out, err = run(capsys, "flow", "--activation", "tanhh")
    assert code == 2 and out == ""
    assert err.startswith("error: ") and "Did you mean 'tanh'?" in err
    code, _, err = run(capsys, "criticality", "rleu")
    assert code == 2 and "Did you mean 'relu'?" in err


@pytest.mark.parametrize(
    "argv, match",
    [
        (["flow", "--inputs", "/definitely/not/here.csv"], "does not exist"),
        (["flow", "--depth", "3", "--widths", "4,4,4"], "disagrees"),
        (["flow", "--critical", "--c-w", "2"], "--critical"),
        (["flow", "--activation", "monomial", "-p", "power=2", "--critical"], "no critical"),
        (["flow", "--c-w", "-1"], "'c_w'"),
        (["flow", "--activation", "leaky_relu", "-p", "slope=-1"], "slope"),
    ],
)
def test_input_errors_exit_2(capsys, argv, match):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and match in err, err


def test_bad_inputs_files_exit_2(tmp_path, capsys):
    (tmp_path / "nan.csv").write_text("1,0\nnan,1\n")
    code, _, err = run(capsys, "flow", "--inputs", str(tmp_path / "nan.csv"))
    assert code == 2 and "finite" in err and "nan.csv" in err
    np.save(tmp_path / "cube.npy", np.zeros((2, 2, 2)))
    code, _, err = run(capsys, "compare", "--inputs", str(tmp_path / "cube.npy"), "--size", "10")
    assert code == 2 and "2-D" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["flow", "--depth", "0"],
        ["flow", "--width", "4", "--widths", "4,4"],
        ["flow", "--widths", "4,x"],
        ["flow", "--c-b", "abc"],
        ["compare", "--seed", "-1"],
        ["nonsense"],
        ["flow", "--no-such-option"],
    ],
)
def test_usage_errors_exit_2(capsys, argv):
    code, _, err = run(capsys, *argv)
    assert code == 2 and "usage:" in err


# ----------------------------------------------------------------------------- training
def test_default_job_shows_trained_networks(capsys, monkeypatch):
    monkeypatch.setenv(cli.ENSEMBLE_SIZE_ENV, "100")
    d, _ = run_json(capsys, "--no-progress")
    tr = d["training"]
    assert isinstance(tr, dict), tr
    assert tr["network"]["widths"] == [1, 32, 1] and tr["ensemble"]["size"] == 200
    assert tr["X_train"] == [[-0.5], [0.5]] and tr["X_test"] == [[-1.0]]
    obs = tr["observables"]
    assert set(obs) == {"trained_mean", "trained_variance"}
    # the same numbers as the API: pdlt.solve with gradient descent at half the stability limit
    net = pdlt.MLP(input_dim=1, hidden_widths=[32], activation=pdlt.activation("tanh"), c_b=0.0, c_w=1.0)
    Xa, ya, Xb, _ = data.regression_1d(n_train=2, n_test=1, design="grid")
    dist = pdlt.solve(net, pdlt.GradientDescent(learning_rate=tr["algorithm"]["learning_rate"]), Xa, ya, Xb,
                      warn_regime=False)
    np.testing.assert_allclose(obs["trained_mean"]["theory"], dist.mean, rtol=1e-10)
    np.testing.assert_allclose(obs["trained_mean"]["infinite_width"], dist.mean_infinite, rtol=1e-10)
    assert abs(obs["trained_mean"]["z"][0][0]) < 5


def test_default_job_text_has_training_table(capsys, monkeypatch):
    monkeypatch.setenv(cli.ENSEMBLE_SIZE_ENV, "100")
    code, out, err = run(capsys, "--no-progress")
    assert code == 0, err
    assert "trained network: theory vs real networks" in out
    assert "E[z(x=-1)]" in out and "Var[z(x=-1)]" in out and "z (∞)" in out
    code, out, err = run(capsys, "--no-progress", "--no-train")
    assert code == 0 and "trained network" not in out


def test_default_job_reports_training_unavailable_for_relu(capsys, monkeypatch):
    monkeypatch.setenv(cli.ENSEMBLE_SIZE_ENV, "50")
    code, out, err = run(capsys, "--no-progress", "-a", "relu", "--depth", "2", "--width", "6")
    assert code == 0, err
    assert "unavailable for this network" in out


def test_train_leading_json_and_plot(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "t.png"
    d, err = run_json(capsys, "train", "--leading", "--n-test", "7", "--plot", str(png))
    assert png.is_file() and png.stat().st_size > 1000
    assert d["command"] == "train" and d["mean_correction"] is None
    assert np.array(d["mean_infinite"]).shape == (7, 1)
    assert d["algorithm"]["name"] == "gradient_descent"
    # η defaults to half the stability limit: the mean does not depend on it at convergence
    net = pdlt.MLP(input_dim=1, hidden_widths=[32], activation=pdlt.activation("tanh"), c_b=0.0, c_w=1.0)
    Xa, ya, Xb, _ = data.regression_1d(2, 7, design="grid")
    ref = pdlt.solve(net, pdlt.GradientDescent(learning_rate=0.1), Xa, ya, Xb, order="leading")
    np.testing.assert_allclose(d["mean_infinite"], ref.mean_infinite, rtol=1e-10, atol=1e-12)


def test_train_with_corrections_and_ensemble(capsys):
    code, out, err = run(capsys, "train", "--n-test", "1", "--ensemble", "200", "--no-progress")
    assert code == 0, err
    assert "mean (1/n)" in out and "200 real networks trained" in out and "z (1/n)" in out


def test_train_bayesian_and_files(capsys, tmp_path):
    train = tmp_path / "train.csv"
    train.write_text("x,y\n-0.5,-1\n0.7,0.4\n")
    test = tmp_path / "test.csv"
    test.write_text("0.2\n")
    d, _ = run_json(capsys, "train", "--algorithm", "bayesian", "--noise-variance", "0.1", "--train-file", str(train),
                    "--test-file", str(test))
    assert d["algorithm"]["noise_variance"] == 0.1 and np.array(d["mean"]).shape == (1, 1)
    assert d["mean_correction"] is not None


@pytest.mark.parametrize("argv, message", [
    (["train", "--data", "sine"], "Did you mean 'sin'"),
    (["train", "--test-file", "x.csv"], "--test-file needs --train-file"),
    (["train", "--algorithm", "bayesian", "--ensemble", "10", "--leading"], "--ensemble trains real networks"),
    (["train", "--algorithm", "gradient_descnt"], "Did you mean 'gradient_descent'"),
])
def test_train_errors_say_what_to_fix(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2 and message in err


def test_plugins_lists_observables(capsys):
    d, _ = run_json(capsys, "plugins")
    names = {e["name"] for e in d["observables"]}
    assert {"non_gaussianity", "test_mse", "trained_mean"} <= names
