"""Tests of the plugin system (pdlt.plugins, pdlt.hookspecs).

A throwaway third-party plugin is "installed" for a test by writing a module and a
``*.dist-info`` directory (METADATA + entry_points.txt in group ``pdlt``) into a temporary
directory put on ``sys.path``; ``importlib.metadata`` then finds it exactly as it finds a
pip-installed distribution.  The cached default manager is reset around every test that
changes what is installed, and restored in ``finally``.
"""

from __future__ import annotations

import ast
import inspect
import itertools
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pluggy
import pytest

import pdlt
from pdlt import hookspecs, plugins
from pdlt.activation import Activation
from pdlt.errors import PdltError, PluginError, UnknownNameError
from pdlt.hookspecs import hookimpl

CORE_DIR = Path(pdlt.__file__).resolve().parent

ARCTAN_SOURCE = '''
    """A third-party plugin: the arctan activation."""
    import attrs
    import numpy as np

    from pdlt.activation import Activation
    from pdlt.hookspecs import hookimpl


    @attrs.frozen(kw_only=True)
    class Arctan(Activation):
        """σ(z) = arctan(z); derivatives in closed form up to order 4."""

        name = "{name}"

        def __call__(self, z):
            return np.arctan(np.asarray(z))

        def _derivative(self, z, order):
            u = 1.0 + z * z
            if order == 1:
                return 1.0 / u
            if order == 2:
                return -2.0 * z / u**2
            if order == 3:
                return (6.0 * z**2 - 2.0) / u**3
            return 24.0 * z * (1.0 - z**2) / u**4


    @hookimpl
    def pdlt_register_activations():
        return [Arctan]
'''


# ============================================================================== fixtures
_counter = itertools.count()


@pytest.fixture
def install(tmp_path, monkeypatch):
    """Factory: install a module as a distribution advertising it in the ``pdlt`` entry-point group.

    ``install(source, entry_point=None)`` returns (module name, entry-point name).  The module
    name is unique per call, so imports never leak between tests; the modules are removed
    from ``sys.modules`` afterwards.
    """
    names: list[str] = []
    monkeypatch.syspath_prepend(str(tmp_path))

    def _install(source: str, *, entry_point: str | None = None, ep_name: str | None = None) -> tuple[str, str]:
        modname = f"pdlt_test_plugin_{next(_counter)}"
        names.append(modname)
        (tmp_path / f"{modname}.py").write_text(textwrap.dedent(source), encoding="utf-8")
        dist = tmp_path / f"{modname}-0.1.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {modname}\nVersion: 0.1\n", encoding="utf-8")
        ep = ep_name or modname.replace("_", "-")
        (dist / "entry_points.txt").write_text(f"[pdlt]\n{ep} = {entry_point or modname}\n", encoding="utf-8")
        import importlib

        importlib.invalidate_caches()
        return modname, ep

    try:
        yield _install
    finally:
        for name in names:
            sys.modules.pop(name, None)


@pytest.fixture
def fresh_default():
    """Drop the cached default manager (so name lookups see what the test installs); restore it after."""
    old = plugins.default_manager()
    plugins.reset_default_manager()
    try:
        yield
    finally:
        plugins.reset_default_manager(old)


@pytest.fixture(autouse=True)
def _autoload_on(monkeypatch):
    monkeypatch.delenv("PDLT_DISABLE_PLUGIN_AUTOLOAD", raising=False)


class Provider:
    """A plugin object registering fixed classes (registered directly, without an entry point)."""

    def __init__(self, *classes):
        self.classes = list(classes)

    @hookimpl
    def pdlt_register_activations(self):
        return self.classes


def _activation_class(name, base=Activation):
    return type(f"Act_{name or 'anon'}", (base,), {"name": name, "__call__": lambda self, z: np.tanh(z)})


# ============================================================================== (1) core/plugins separation
def _import_targets(tree: ast.AST):
    """(lineno, module) for every import statement and import_module/__import__ call with a literal."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module
        elif isinstance(node, ast.Call):
            f = node.func
            fname = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            if fname in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
                yield node.lineno, str(node.args[0].value)


def _docstring_nodes(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            ids.add(id(node.value))
    return ids


def test_core_never_imports_pdlt_plugins():
    files = sorted(CORE_DIR.rglob("*.py"))
    assert len(files) > 5
    offenders = []
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for lineno, module in _import_targets(tree):
            if module == "pdlt_plugins" or module.startswith("pdlt_plugins."):
                offenders.append(f"{path.relative_to(CORE_DIR)}:{lineno} imports {module}")
    assert not offenders, "the core must not import pdlt_plugins:\n" + "\n".join(offenders)


def test_pdlt_plugins_named_only_in_default_plugins():
    """Outside docstrings and comments, the string 'pdlt_plugins' occurs only in DEFAULT_PLUGINS."""
    offenders = []
    found_default_plugins = False
    for path in sorted(CORE_DIR.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docs = _docstring_nodes(tree)
        allowed: set[int] = set()
        if path.name == "plugins.py":
            for node in ast.walk(tree):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
                if any(isinstance(t, ast.Name) and t.id == "DEFAULT_PLUGINS" for t in targets):
                    allowed |= {id(c) for c in ast.walk(node) if isinstance(c, ast.Constant)}
                    found_default_plugins = True
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str) and "pdlt_plugins" in node.value
                    and id(node) not in docs and id(node) not in allowed):
                offenders.append(f"{path.relative_to(CORE_DIR)}:{node.lineno}: {node.value!r}")
    assert found_default_plugins, "DEFAULT_PLUGINS assignment not found in pdlt/plugins.py"
    assert not offenders, "\n".join(offenders)
    assert all(m.startswith("pdlt_plugins.") for m in plugins.DEFAULT_PLUGINS)


def test_importing_pdlt_does_not_import_plugins():
    code = "import sys, pdlt, pdlt.cli, pdlt.data; print(sorted(m for m in sys.modules if m.startswith('pdlt_plugins')))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_default_plugins_registered_by_name():
    pm = plugins.get_plugin_manager(load_entrypoints=False)
    names = {name for name, plugin in pm.list_name_plugin() if plugin is not None}
    assert "pdlt_plugins.activations" in names and "pdlt_plugins.architectures" in names
    assert names <= set(plugins.DEFAULT_PLUGINS)
    acts = plugins.registry(pm, "activation")
    assert all(issubclass(c, Activation) and c.name == n for n, c in acts.items())


# ============================================================================== (2) a third-party plugin
def _gauss_hermite_2d(f, K, m=300):
    """⟨f(z1, z2)⟩ for z ~ N(0, K) by a tensor Gauss–Hermite rule in Cholesky coordinates.

    arctan has poles at ±i, so Gauss–Hermite converges slowly: 300 nodes reach ~1e-15.
    """
    x, w = np.polynomial.hermite_e.hermegauss(m)
    w = w / math.sqrt(2 * math.pi)
    L = np.linalg.cholesky(K)
    u1, u2 = np.meshgrid(x, x, indexing="ij")
    z1 = L[0, 0] * u1
    z2 = L[1, 0] * u1 + L[1, 1] * u2
    return float(np.einsum("i,j,ij->", w, w, f(z1, z2)))


def test_third_party_plugin_via_entry_point(install, fresh_default):
    from scipy import integrate

    modname, ep = install(ARCTAN_SOURCE.replace("{name}", "test_arctan"))
    pm = plugins.get_plugin_manager()
    assert pm.get_plugin(ep) is sys.modules[modname]
    cls = plugins.lookup("activation", "test_arctan", pm=pm)
    assert cls.__module__ == modname
    assert "test_arctan" in plugins.registry(pm, "activation")

    # the public API, through the default manager
    act = pdlt.activation("test_arctan")
    assert type(act) is cls and isinstance(act, Activation)
    assert "test_arctan" in plugins.available("activation")
    assert pdlt.plugins.lookup("activation", "TEST_ARCTAN") is cls  # names are case-insensitive

    # Gaussian expectations by quadrature (no closed form is registered for it)
    K = 1.3
    same = np.full((2, 2), K)  # both slots on one variable: a singular block
    assert pdlt.expect(act, (0, 0), same, method="closed") is None
    for orders, f in (((0, 0), lambda z: np.arctan(z) ** 2), ((1, 1), lambda z: 1.0 / (1.0 + z * z) ** 2)):
        ref, _ = integrate.quad(lambda z: f(z) * math.exp(-z * z / (2 * K)) / math.sqrt(2 * math.pi * K),
                                -np.inf, np.inf, epsabs=1e-14, epsrel=1e-13)
        value, err = pdlt.gaussian.expect(act, orders, same)
        assert abs(value - ref) <= 1e-10 * abs(ref)
        assert err <= 1e-8
    K2 = np.array([[1.0, 0.6], [0.6, 0.8]])
    value, _ = pdlt.gaussian.expect(act, (0, 0), K2)
    ref = _gauss_hermite_2d(lambda a, b: np.arctan(a) * np.arctan(b), K2)
    assert abs(value - ref) <= 1e-10 * abs(ref)

    # a flow with it: layer 2 obeys K^(2) = C_b + C_W ⟨σσ⟩_{K^(1)}
    net = pdlt.MLP(input_dim=2, hidden_widths=[16, 16], activation=act, c_b=0.1, c_w=1.2)
    X = np.array([[1.0, 0.0], [0.6, 0.8]])
    f = pdlt.flow(net, X)
    K1 = f.layer(1).K
    expected = 0.1 + 1.2 * _gauss_hermite_2d(lambda a, b: np.arctan(a) * np.arctan(b), K1)
    assert f.layer(2).K[0, 1] == pytest.approx(expected, rel=1e-9)
    V = f[-1].V
    assert np.all(np.isfinite(V)) and np.allclose(V, V.transpose(2, 3, 0, 1))


def test_autoload_disabled_skips_entry_points(install, fresh_default, monkeypatch):
    install(ARCTAN_SOURCE.replace("{name}", "test_arctan_off"))
    assert "test_arctan_off" in plugins.registry(plugins.get_plugin_manager(), "activation")
    assert "test_arctan_off" not in plugins.registry(plugins.get_plugin_manager(load_entrypoints=False), "activation")
    monkeypatch.setenv("PDLT_DISABLE_PLUGIN_AUTOLOAD", "1")
    pm = plugins.get_plugin_manager()
    assert "test_arctan_off" not in plugins.registry(pm, "activation")
    assert "tanh" in plugins.registry(pm, "activation")  # built-ins are not entry points
    with pytest.raises(UnknownNameError):
        pdlt.activation("test_arctan_off")


# ============================================================================== (3) registration errors
def test_duplicate_name_between_two_plugins_names_both():
    pm = plugins.get_plugin_manager(load_entrypoints=False)
    pm.register(Provider(_activation_class("shared")), name="provider-a")
    pm.register(Provider(_activation_class("shared")), name="provider-b")
    with pytest.raises(PluginError) as info:
        plugins.registry(pm, "activation")
    msg = str(info.value)
    assert "'shared'" in msg and "provider-a" in msg and "provider-b" in msg and "twice" in msg


def test_duplicate_of_builtin_via_entry_point(install, fresh_default):
    _, ep = install(
        """
        from pdlt.hookspecs import hookimpl
        from pdlt.activation import Activation

        class MyTanh(Activation):
            name = "tanh"

        @hookimpl
        def pdlt_register_activations():
            return [MyTanh]
        """
    )
    pm = plugins.get_plugin_manager()
    with pytest.raises(PluginError) as info:
        plugins.registry(pm, "activation")
    assert "pdlt_plugins.activations" in str(info.value) and ep in str(info.value)
    with pytest.raises(PluginError, match=ep):
        pdlt.activation("relu")  # the clash is reported on lookup through the public API too


@pytest.mark.parametrize("name", ["", None, 3])
def test_class_without_string_name_refused(name):
    pm = plugins.get_plugin_manager(load_entrypoints=False)
    cls = _activation_class("x")
    if name is None:
        cls = type("Nameless", (), {})
    else:
        cls.name = name
    pm.register(Provider(cls), name="nameless-provider")
    with pytest.raises(PluginError, match="nameless-provider.*without a string 'name'"):
        plugins.registry(pm, "activation")


# ============================================================================== (4) broken plugins
def test_plugin_failing_to_import(install, fresh_default, monkeypatch):
    _, ep = install("raise ImportError('needs a package that is not installed')\n")
    with pytest.raises(PluginError) as info:
        plugins.get_plugin_manager()
    msg = str(info.value)
    assert ep in msg and "ImportError" in msg and "not installed" in msg and "PDLT_DISABLE_PLUGIN_AUTOLOAD" in msg
    assert isinstance(info.value, PdltError)
    with pytest.raises(PluginError, match=ep):
        pdlt.activation("tanh")
    monkeypatch.setenv("PDLT_DISABLE_PLUGIN_AUTOLOAD", "1")  # the documented way out
    plugins.reset_default_manager()
    assert pdlt.activation("tanh").name == "tanh"


def test_entry_point_to_missing_object(install):
    modname, _ = install("x = 1\n", entry_point=None)
    _, ep = install("y = 2\n", entry_point=f"{modname}:does_not_exist", ep_name="pointing-nowhere")
    with pytest.raises(PluginError, match="pointing-nowhere.*AttributeError"):
        plugins.get_plugin_manager()


def test_hook_raising_is_reported_by_name(install, fresh_default):
    _, ep = install(
        """
        from pdlt.hookspecs import hookimpl

        @hookimpl
        def pdlt_register_activations():
            raise RuntimeError("boom")
        """
    )
    pm = plugins.get_plugin_manager()  # loading works; the failure shows when the hook runs
    with pytest.raises(PluginError) as info:
        plugins.registry(pm, "activation")
    assert ep in str(info.value) and "RuntimeError: boom" in str(info.value)
    assert plugins.lookup("architecture", "mlp", pm=pm).name == "mlp"  # other kinds unaffected
    with pytest.raises(PluginError, match=ep):
        pdlt.activation("tanh")


# ============================================================================== (5) unknown names
def test_unknown_name_lists_available_and_closest():
    with pytest.raises(UnknownNameError) as info:
        pdlt.activation("tanhh")
    msg = str(info.value)
    assert "Did you mean 'tanh'?" in msg
    for name in plugins.available("activation"):
        assert name in msg
    assert isinstance(info.value, LookupError) and isinstance(info.value, PdltError)


def test_unknown_name_without_close_match():
    with pytest.raises(UnknownNameError) as info:
        plugins.lookup("architecture", "transformer-xl")
    assert "Did you mean" not in str(info.value) and "mlp" in str(info.value)


def test_unknown_kind():
    with pytest.raises(UnknownNameError, match="activation"):
        plugins.registry(plugins.get_plugin_manager(load_entrypoints=False), "activations")


def test_lookup_is_case_insensitive():
    assert plugins.lookup("activation", "ReLU") is plugins.lookup("activation", "relu")


# ============================================================================== (6) check_pending
def test_misspelled_hook_caught_by_check_pending(install):
    modname, _ = install(
        """
        from pdlt.hookspecs import hookimpl

        @hookimpl
        def pdlt_register_activation():  # missing "s"
            return []
        """
    )
    with pytest.raises(PluginError) as info:
        plugins.get_plugin_manager()
    # pluggy reports the plugin object (here the module), which names it
    assert modname in str(info.value) and "'pdlt_register_activation'" in str(info.value)


def test_check_pending_with_plain_pluggy():
    pm = plugins.get_plugin_manager(load_entrypoints=False)

    class Misspelled:
        @hookimpl
        def pdlt_register_architecture(self):
            return []

    pm.register(Misspelled(), name="misspelled")
    with pytest.raises(pluggy.PluginValidationError, match="pdlt_register_architecture"):
        pm.check_pending()


def test_wrong_hook_signature_rejected(install):
    _, ep = install(
        """
        from pdlt.hookspecs import hookimpl

        @hookimpl
        def pdlt_gaussian_expectation(activation, order, K):  # 'order' is not a spec argument
            return None
        """
    )
    with pytest.raises(PluginError, match=ep):
        plugins.get_plugin_manager()


# ============================================================================== (7) hookspecs
def _hookspecs():
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    specs = {}
    for name in dir(hookspecs):
        obj = getattr(hookspecs, name)
        if callable(obj) and pm.parse_hookspec_opts(hookspecs, name) is not None:
            specs[name] = obj
    return specs, pm


def test_hookspecs_found():
    specs, _ = _hookspecs()
    assert {"pdlt_register_activations", "pdlt_register_architectures", "pdlt_register_learning_algorithms",
            "pdlt_register_observables", "pdlt_gaussian_expectation"} <= set(specs)


def test_every_hookspec_prefixed_and_documented():
    specs, pm = _hookspecs()
    for name, fn in specs.items():
        assert name.startswith("pdlt_"), name
        doc = inspect.getdoc(fn)
        assert doc and len(doc.split()) >= 5, f"hookspec {name} is not documented"
        params = [p for p in inspect.signature(fn).parameters]
        for p in params:
            assert p in doc, f"hookspec {name}: parameter {p!r} is not documented"
        opts = pm.parse_hookspec_opts(hookspecs, name)
        if opts.get("firstresult"):
            assert "Stops at first non-None result" in doc, name


def test_every_pdlt_function_in_hookspecs_is_a_spec():
    specs, _ = _hookspecs()
    candidates = {n for n, obj in vars(hookspecs).items() if n.startswith("pdlt_") and inspect.isfunction(obj)}
    assert candidates == set(specs)


def test_every_registration_hook_maps_to_a_kind():
    specs, _ = _hookspecs()
    kinds = {"activation", "architecture", "learning_algorithm", "observable"}
    pm = plugins.get_plugin_manager(load_entrypoints=False)
    for kind in kinds:
        assert f"pdlt_register_{kind}s" in specs
        assert isinstance(plugins.registry(pm, kind), dict)
    registration = {n for n in specs if n.startswith("pdlt_register_")}
    assert registration == {f"pdlt_register_{k}s" for k in kinds}
