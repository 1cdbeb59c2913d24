"""Unit tests of pdlt.plotting: every figure has the artists and labels it promises, the phase
diagram's numbers are right, errors are clear, and ``--plot`` writes an image from the CLI."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

import pdlt
from pdlt import cli
from pdlt.errors import ParameterError, PdltError

X2 = np.array([[1.0, 0.0], [0.6, 0.8]])
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SMALL = ["--depth", "3", "--width", "6"]


@pytest.fixture(scope="module")
def plotting():
    pytest.importorskip("matplotlib")
    from pdlt import plotting

    return plotting


@pytest.fixture(scope="module")
def relu_net():
    return pdlt.MLP(input_dim=2, hidden_widths=[6] * 3, output_dim=4, activation=pdlt.activation("relu"), c_w=2.0)


@pytest.fixture(scope="module")
def relu_flow(relu_net):
    return pdlt.flow(relu_net, X2)


@pytest.fixture(scope="module")
def relu_ensemble(relu_net):
    return pdlt.ensemble.sample(relu_net, X2, 200, seed=0)


def _labels(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()] if ax.get_legend() else []


def _render(plotting, fig, tmp_path, name="fig.png"):
    """Draw for real (mathtext errors only show up here) and return the file's bytes."""
    path = tmp_path / name
    plotting.savefig(fig, path)
    return path.read_bytes()


# ----------------------------------------------------------------------------- missing extra
def test_missing_matplotlib_raises_a_pdlt_error(monkeypatch):
    from pdlt import plotting

    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(plotting.MissingDependencyError, match=r"install pdlt\[plot\]") as info:
        plotting.plot_trained([0.0, 1.0], [0.1, 0.1], [0.0, 1.0])
    assert isinstance(info.value, PdltError) and isinstance(info.value, ImportError)


def test_cli_plot_without_matplotlib_exits_2_before_computing(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    code = cli.main(["criticality", "tanh", "--plot", str(tmp_path / "x.png")])
    out, err = capsys.readouterr()
    assert code == 2 and "install pdlt[plot]" in err and out == ""
    assert not (tmp_path / "x.png").exists()


def test_importing_pdlt_does_not_import_matplotlib():
    import subprocess

    code = "import sys, pdlt, pdlt.plotting, pdlt.interop; print('matplotlib' in sys.modules, 'sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# ----------------------------------------------------------------------------- plot_flow
def test_plot_flow_default_panels(plotting, relu_flow, tmp_path):
    fig = plotting.plot_flow(relu_flow)
    axes = fig.axes
    assert len(axes) == 2
    assert r"K^{(\ell)}_{\alpha\alpha}" in axes[0].get_ylabel()
    assert "V^{(\\ell)}" in axes[1].get_ylabel() and "n_{\\ell-1}" in axes[1].get_ylabel()
    for ax in axes:
        assert ax.get_xlabel() == r"layer $\ell$"
        for line in ax.get_lines():
            np.testing.assert_array_equal(line.get_xdata(), [1, 2, 3, 4])
    # inputs of different norm: one curve each; the critical ReLU keeps K_αα = C_W |x|²/n_0
    k_lines = axes[0].get_lines()
    assert len(k_lines) == 1  # both inputs have |x| = 1: their curves coincide and are drawn once
    np.testing.assert_allclose(k_lines[0].get_ydata(), 1.0, rtol=1e-12)
    assert _labels(axes[0]) == [r"$\alpha = 0, 1$"]
    v = axes[1].get_lines()[0].get_ydata()
    s = relu_flow[-1]
    np.testing.assert_allclose(v[-1], s.V[0, 0, 0, 0] / (s.fan_in * s.K[0, 0] ** 2), rtol=1e-12)
    assert fig.get_suptitle().startswith("relu MLP")
    assert _render(plotting, fig, tmp_path).startswith(PNG_MAGIC)


def test_plot_flow_inputs_of_different_norm_get_separate_curves(plotting):
    net = pdlt.MLP(input_dim=2, hidden_widths=[8] * 7, activation=pdlt.activation("relu"), c_w=1.0)
    fl = pdlt.flow(net, np.array([[1.0, 0.0], [0.0, 2.0]]), order="leading")
    fig = plotting.plot_flow(fl, "K")
    ax = fig.axes[0]
    assert len(ax.get_lines()) == 2 and _labels(ax) == [r"$\alpha = 0$", r"$\alpha = 1$"]
    assert ax.get_yscale() == "log"  # C_W = 1 < 2: K halves every layer, a factor 2^7 over depth


def test_plot_flow_every_quantity_renders(plotting, relu_flow, tmp_path):
    fig = plotting.plot_flow(relu_flow, ["K", "Θ", "V/(nK²)", "G1/(nK)", "H1/(nTheta)", "A/(nTheta^2)",
                                          "B/(nTheta^2)", "D/(nKTheta)", "F/(nKTheta)"])
    assert len(fig.axes) == 9
    assert _render(plotting, fig, tmp_path).startswith(PNG_MAGIC)


def test_plot_flow_draws_on_given_axes(plotting, relu_flow):
    Figure, _ = plotting._matplotlib()
    fig = Figure()
    ax = fig.subplots()
    assert plotting.plot_flow(relu_flow, "K", ax=ax) is fig
    assert len(ax.get_lines()) == 1
    with pytest.raises(ParameterError, match="one Axes per quantity"):
        plotting.plot_flow(relu_flow, ("K", "Theta"), ax=ax)


def test_plot_flow_errors(plotting, relu_net):
    leading = pdlt.flow(relu_net, X2, order="leading")
    with pytest.raises(ParameterError, match="order='full'"):
        plotting.plot_flow(leading)
    with pytest.raises(ParameterError, match="not known.*Choose from"):
        plotting.plot_flow(leading, "Kappa")
    with pytest.raises(ParameterError, match="inputs"):
        plotting.plot_flow(leading, "K", inputs=[5])
    with pytest.raises(ParameterError, match="flow"):
        plotting.plot_flow([], "K")


# ----------------------------------------------------------------------------- plot_ntk_flow
def test_plot_ntk_flow(plotting, relu_flow, tmp_path):
    fig = plotting.plot_ntk_flow(relu_flow)
    left, right = fig.axes
    assert r"\Theta^{(\ell)}" in left.get_ylabel()
    labels = _labels(right)
    assert len(labels) == 4
    for sym, norm in (("A", r"n\Theta^2"), ("B", r"n\Theta^2"), ("D", r"nK\Theta"), ("F", r"nK\Theta")):
        assert any(lab.startswith(f"${sym}_") and norm in lab for lab in labels), labels
    s = relu_flow[-1]
    f_line = right.get_lines()[3]
    np.testing.assert_allclose(f_line.get_ydata()[-1], s.F[0, 0, 0, 0] / (s.fan_in * s.K[0, 0] * s.Theta[0, 0]), rtol=1e-12)
    assert _render(plotting, fig, tmp_path).startswith(PNG_MAGIC)


def test_plot_ntk_flow_needs_the_full_flow(plotting, relu_net):
    with pytest.raises(ParameterError, match="order='full'"):
        plotting.plot_ntk_flow(pdlt.flow(relu_net, X2, order="leading"))


# ----------------------------------------------------------------------------- phase diagram
def test_phase_diagram_data_tanh(plotting):
    d = plotting.phase_diagram_data(pdlt.activation("tanh"), (0.5, 2.0), 0.0, num=16)
    c_w, k = d["c_w"], d["K_star"]
    below, above = c_w < 1.0, c_w > 1.0
    assert np.all(k[below] == 0.0) and np.all((k[above] > 0) & np.isfinite(k[above]))
    # K* solves the fixed-point equation K = C_W ⟨tanh²⟩_K
    g, _ = pdlt.expect(pdlt.activation("tanh"), (0, 0), k[above][:, None, None] * np.ones((1, 2, 2)))
    np.testing.assert_allclose(c_w[above] * g, k[above], rtol=1e-9)
    # ordered below criticality: χ → C_W σ'(0)² = C_W as K → 0
    np.testing.assert_allclose(d["chi_parallel"][below], c_w[below], rtol=1e-5)
    np.testing.assert_allclose(d["chi_perp"][below], c_w[below], rtol=1e-5)
    assert np.all(d["chi_perp"][above] > 1) and np.all(d["chi_parallel"][above] < 1)  # the chaotic phase


def test_phase_diagram_data_relu_and_bias(plotting):
    d = plotting.phase_diagram_data("relu", [1.0, 1.5, 2.5, 3.0])
    np.testing.assert_allclose(d["chi_parallel"], d["c_w"] / 2, rtol=1e-7)  # kinked σ: engine target 1e-8
    np.testing.assert_allclose(d["chi_perp"], d["c_w"] / 2, rtol=1e-7)
    assert list(d["K_star"]) == [0.0, 0.0, np.inf, np.inf]
    d = plotting.phase_diagram_data("relu", [1.0, 1.5, 1.6], c_b=0.5)  # K* = C_b/(1 − C_W/2)
    np.testing.assert_allclose(d["K_star"], [1.0, 2.0, 2.5], rtol=1e-7)
    d = plotting.phase_diagram_data("relu", (1.0, 1.5), num=11)  # two numbers: a range
    np.testing.assert_allclose(d["c_w"], np.linspace(1.0, 1.5, 11))


def test_plot_phase_diagram(plotting, tmp_path):
    fig = plotting.plot_phase_diagram(pdlt.activation("tanh"), (0.2, 3.0), 0.0, num=41)
    top, bottom = fig.axes
    labels = _labels(top)
    assert r"$\chi_\parallel(K^\star)$" in labels and r"$\chi_\perp(K^\star)$" in labels
    assert any("critical $C_W = 1$" in lab for lab in labels)
    assert any("ordered" in lab for lab in labels) and any("chaotic" in lab for lab in labels)
    assert bottom.get_xlabel() == r"weight variance $C_W$" and "K^\\star" in bottom.get_ylabel()
    assert bottom.get_yscale() == "log"
    assert "tanh" in top.get_title()
    assert _render(plotting, fig, tmp_path).startswith(PNG_MAGIC)


def test_plot_phase_diagram_without_finite_fixed_point(plotting, tmp_path):
    fig = plotting.plot_phase_diagram("relu", (0.5, 4.0), num=21)
    bottom = fig.axes[1]
    assert [t.get_text() for t in bottom.texts] == [r"no fixed point $0 < K^\star < \infty$ on this range"]
    assert _labels(bottom) == [r"$K^{(\ell)} \to 0$", r"$K^{(\ell)} \to \infty$"]
    assert _render(plotting, fig, tmp_path).startswith(PNG_MAGIC)


def test_phase_diagram_survives_overflowing_expectations(plotting):
    # ⟨e^{2z}⟩_K = e^{2K} overflows on the K grid: the kernel grows without bound there, χ is NaN
    d = plotting.phase_diagram_data("exponential", [0.05, 0.1, 1.0, 2.0])
    assert np.all(np.isfinite(d["K_star"][:2])) and np.all(np.isinf(d["K_star"][2:]))
    np.testing.assert_allclose(d["chi_perp"][:2], d["c_w"][:2] * np.exp(2 * d["K_star"][:2]), rtol=1e-9)
    assert np.all(np.isnan(d["chi_perp"][2:]))


def test_phase_diagram_of_an_activation_without_susceptibilities(plotting):
    with pytest.raises(pdlt.NumericalError, match="no phase diagram"):
        plotting.plot_phase_diagram("perceptron", (0.5, 2.0), num=5)


def test_plot_phase_diagram_errors(plotting):
    with pytest.raises(ParameterError, match="c_w_range"):
        plotting.plot_phase_diagram("tanh", (-1.0, 2.0))
    with pytest.raises(ParameterError, match="c_b"):
        plotting.plot_phase_diagram("tanh", (0.5, 2.0), c_b=-1.0)
    with pytest.raises(ParameterError, match="activation"):
        plotting.plot_phase_diagram(3, (0.5, 2.0))


# ----------------------------------------------------------------------------- comparison
def test_plot_comparison(plotting, relu_flow, relu_ensemble, tmp_path):
    fig = plotting.plot_comparison(relu_flow, relu_ensemble, ["K", "Θ", "V"])
    assert len(fig.axes) == 6
    top_k, top_t, top_v, z_k, z_t, z_v = fig.axes  # row-major: values, then z-scores
    assert "K^{(\\ell)}_{00}" in top_k.get_ylabel() and "\\Theta^{(\\ell)}_{00}" in top_t.get_ylabel()
    assert "V^{(\\ell)}_{(00)(00)}" in top_v.get_ylabel()
    labels = _labels(top_k)
    assert labels[0] == r"theory, to $O(1/n)$" and labels[1] == "infinite width"
    assert labels[2] == "ensemble (200 networks) ± SE"
    assert len(top_k.containers) == 1  # the error bars
    bars = top_k.containers[0]
    np.testing.assert_allclose(bars.lines[0].get_ydata(), [e.K.mean[0, 0] for e in relu_ensemble])
    z = z_k.get_lines()[-1].get_ydata()
    expected = [float(e.K.z_score(s.metric())[0, 0]) for e, s in zip(relu_ensemble, relu_flow)]
    np.testing.assert_allclose(z, expected)
    assert "z" in z_k.get_ylabel() and z_k.get_xlabel() == r"layer $\ell$"
    assert _render(plotting, fig, tmp_path).startswith(PNG_MAGIC)


def test_plot_comparison_one_neuron_and_component(plotting, relu_flow, relu_ensemble, tmp_path):
    fig = plotting.plot_comparison(relu_flow, relu_ensemble, ("V_one_neuron", "A_one_neuron", "D_one_neuron"))
    assert "(one neuron)" in fig.axes[0].get_ylabel() and "B_{0000}" in fig.axes[1].get_ylabel()
    assert _render(plotting, fig, tmp_path).startswith(PNG_MAGIC)
    fig = plotting.plot_comparison(relu_flow, relu_ensemble, "K", component=(0, 1))
    assert "K^{(\\ell)}_{01}" in fig.axes[0].get_ylabel()


def test_plot_comparison_errors(plotting, relu_net, relu_flow, relu_ensemble):
    with pytest.raises(ParameterError, match="quantity"):
        plotting.plot_comparison(relu_flow, relu_ensemble, "W")
    with pytest.raises(ParameterError, match="component"):
        plotting.plot_comparison(relu_flow, relu_ensemble, "V", component=(0, 0))
    with pytest.raises(ParameterError, match="same network"):
        plotting.plot_comparison(relu_flow[:2], relu_ensemble, "K")
    with pytest.raises(ParameterError, match="order='full'"):
        plotting.plot_comparison(pdlt.flow(relu_net, X2, order="leading"), relu_ensemble, "V")
    no_ntk = pdlt.ensemble.sample(relu_net, X2, 100, seed=1, ntk=False)
    with pytest.raises(ParameterError, match="ntk=True"):
        plotting.plot_comparison(relu_flow, no_ntk, "Theta")


# ----------------------------------------------------------------------------- trained
def test_plot_trained(plotting, tmp_path):
    x = np.linspace(1.0, -1.0, 21)  # unsorted on purpose
    mean, std = np.sin(x), 0.1 + x**2
    fig = plotting.plot_trained(mean[:, None], std, x[:, None], X_train=x[::5], y_train=mean[::5], n_std=2.0,
                                reference=0.5 * mean)
    (ax,) = fig.axes
    line = ax.get_lines()[0]
    np.testing.assert_array_equal(line.get_xdata(), np.sort(x))
    assert len(ax.collections) == 1  # the band
    band = ax.collections[0].get_paths()[0].vertices
    assert band[:, 1].max() == pytest.approx((mean + 2 * std).max())
    assert _labels(ax) == ["mean", r"mean $\pm$ 2$\sigma$", "infinite width", "training data"]
    assert ax.get_xlabel() == r"input $x$" and ax.get_ylabel() == r"output $z^{(L)}(x)$"
    assert _render(plotting, fig, tmp_path).startswith(PNG_MAGIC)


def test_plot_trained_errors(plotting):
    with pytest.raises(ParameterError, match="'mean'"):
        plotting.plot_trained(np.zeros(3), np.zeros(4), np.zeros(4))
    with pytest.raises(ParameterError, match="'X_test'"):
        plotting.plot_trained(np.zeros(4), np.zeros(4), np.zeros((4, 2)))
    with pytest.raises(ParameterError, match=">= 0"):
        plotting.plot_trained(np.zeros(2), -np.ones(2), np.zeros(2))
    with pytest.raises(ParameterError, match="both X_train and y_train"):
        plotting.plot_trained(np.zeros(2), None, np.zeros(2), X_train=np.zeros(2))


# ----------------------------------------------------------------------------- CLI --plot
def test_cli_flow_plot_writes_a_png(plotting, capsys, tmp_path):
    path = tmp_path / "flow.png"
    assert cli.main(["flow", *SMALL, "--plot", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "RG flow" in out and f"saved the figure to {path}" in err
    assert path.read_bytes().startswith(PNG_MAGIC)


def test_cli_flow_plot_with_json_and_config(plotting, capsys, tmp_path):
    path = tmp_path / "lead.svg"
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"depth": 2, "width": 4, "flow": {"plot": str(path), "leading": True}}))
    assert cli.main(["flow", "--config", str(config), "--json"]) == 0
    out, _ = capsys.readouterr()
    assert json.loads(out)["order"] == "leading"
    assert path.read_text().lstrip().startswith("<?xml")


def test_cli_criticality_plot_writes_a_png(plotting, capsys, tmp_path):
    path = tmp_path / "phase.png"
    assert cli.main(["criticality", "relu", "--plot", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "universality class" in out and "saved the figure" in err
    assert path.read_bytes().startswith(PNG_MAGIC)


def test_cli_compare_plot_writes_a_png(plotting, capsys, tmp_path):
    path = tmp_path / "cmp.png"
    code = cli.main(["compare", *SMALL, "--size", "200", "--no-progress", "--plot", str(path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "max |z|" in out and path.read_bytes().startswith(PNG_MAGIC)


def test_cli_plot_to_an_unwritable_path_is_a_clean_error(plotting, capsys, tmp_path):
    code = cli.main(["criticality", "relu", "--plot", str(tmp_path / "missing" / "x.png")])
    _, err = capsys.readouterr()
    assert code == 2 and "Could not save the figure" in err
