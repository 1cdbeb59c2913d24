"""The plugin manager and the name registries built from it.

``get_plugin_manager`` is a factory (not a global): it adds the hookspecs, registers the
built-in plugin modules listed in :data:`DEFAULT_PLUGINS` (by module name, exactly as a third
party would be registered), loads the ``pdlt`` entry-point group unless
``PDLT_DISABLE_PLUGIN_AUTOLOAD`` is set, then checks that every hook implementation has a spec.
The module-level :func:`default_manager` caches one manager for name lookups such as
``pdlt.activation("tanh")``.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import os
import types
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError, UnknownNameError

__all__ = [
    "DEFAULT_PLUGINS",
    "ENTRY_POINT_GROUP",
    "get_plugin_manager",
    "default_manager",
    "reset_default_manager",
    "registry",
    "lookup",
]

#: Built-in plugin modules, registered by name like any third-party plugin.
DEFAULT_PLUGINS: tuple[str, ...] = (
    "pdlt_plugins.activations",
    "pdlt_plugins.closed_forms",
    "pdlt_plugins.architectures",
    "pdlt_plugins.residual",
    "pdlt_plugins.learning",
    "pdlt_plugins.observables",
)
ENTRY_POINT_GROUP = "pdlt"
_KINDS = {
    "activation": "pdlt_register_activations",
    "architecture": "pdlt_register_architectures",
    "learning_algorithm": "pdlt_register_learning_algorithms",
    "observable": "pdlt_register_observables",
}


def get_plugin_manager(load_entrypoints: bool = True) -> pluggy.PluginManager:
    """Build a plugin manager with the built-in plugins (and, optionally, third-party ones).

    Parameters
    ----------
    load_entrypoints : bool
        Load modules advertised in the ``pdlt`` entry-point group.  Ignored (treated as False)
        when the environment variable ``PDLT_DISABLE_PLUGIN_AUTOLOAD`` is set to a non-empty value.

    Raises
    ------
    PluginError
        A plugin module failed to import or register; the message names it.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    for modname in DEFAULT_PLUGINS:
        try:
            module = importlib.import_module(modname)
        except ModuleNotFoundError as exc:
            if exc.name is not None and modname.startswith(exc.name):
                continue  # a built-in module that this installation does not ship
            raise PluginError(f"built-in plugin {modname!r} failed to import: {exc}") from exc
        pm.register(module, name=modname)
    if load_entrypoints and not os.environ.get("PDLT_DISABLE_PLUGIN_AUTOLOAD"):
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
                continue
            try:
                plugin = ep.load()
                pm.register(plugin, name=ep.name)
            except Exception as exc:  # a broken third-party plugin must not crash the core
                raise PluginError(
                    f"plugin {ep.name!r} (entry point {ep.value!r} in group {ENTRY_POINT_GROUP!r}) "
                    f"failed to load: {type(exc).__name__}: {exc}. Uninstall it or set "
                    f"PDLT_DISABLE_PLUGIN_AUTOLOAD=1."
                ) from exc
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        name = pm.get_name(exc.plugin) or repr(exc.plugin)
        raise PluginError(f"plugin {name!r} has a hook without a specification: {exc}") from exc
    return pm


def registry(pm: pluggy.PluginManager, kind: str) -> dict[str, type]:
    """Collect the classes registered for ``kind`` ("activation", "architecture", ...), keyed by name.

    Raises
    ------
    PluginError
        Two plugins register the same name, a class has no ``name``, or a hook raised.
    """
    if kind not in _KINDS:
        raise UnknownNameError(f"unknown plugin kind {kind!r}; choose from {sorted(_KINDS)}")
    hook = getattr(pm.hook, _KINDS[kind])
    out: dict[str, type] = {}
    provider: dict[str, str] = {}
    for impl in hook.get_hookimpls():
        pname = pm.get_name(impl.plugin) or repr(impl.plugin)
        try:
            classes = impl.function() or []
        except Exception as exc:
            raise PluginError(f"plugin {pname!r} failed in {_KINDS[kind]}(): {type(exc).__name__}: {exc}") from exc
        for cls in classes:
            name = getattr(cls, "name", None)
            if not isinstance(name, str) or not name:
                raise PluginError(f"plugin {pname!r} registered {cls!r} as {kind} without a string 'name' class attribute")
            if name in out:
                raise PluginError(
                    f"{kind} name {name!r} is registered twice: by {provider[name]!r} ({out[name].__qualname__}) "
                    f"and by {pname!r} ({cls.__qualname__})"
                )
            out[name] = cls
            provider[name] = pname
    return out


_DEFAULT: pluggy.PluginManager | None = None
_REGISTRIES: dict[str, dict[str, type]] = {}


def default_manager() -> pluggy.PluginManager:
    """The cached plugin manager used for name lookups (built on first use)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = get_plugin_manager()
    return _DEFAULT


def reset_default_manager(pm: pluggy.PluginManager | None = None) -> None:
    """Replace (or drop, with ``None``) the cached default manager; clears cached registries."""
    global _DEFAULT
    _DEFAULT = pm
    _REGISTRIES.clear()


def _registry_cached(kind: str) -> dict[str, type]:
    if kind not in _REGISTRIES:
        _REGISTRIES[kind] = registry(default_manager(), kind)
    return _REGISTRIES[kind]


def lookup(kind: str, name: str, pm: pluggy.PluginManager | None = None) -> type:
    """Return the class registered as ``name`` for ``kind``.

    Raises
    ------
    UnknownNameError
        With the available names and the closest match.
    """
    reg = registry(pm, kind) if pm is not None else _registry_cached(kind)
    key = name.lower() if isinstance(name, str) else name
    if key in reg:
        return reg[key]
    if name in reg:
        return reg[name]
    close = difflib.get_close_matches(str(name), list(reg), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UnknownNameError(f"no {kind} named {name!r}.{hint} Available: {', '.join(sorted(reg))}.")


def available(kind: str) -> list[str]:
    """Sorted names registered for ``kind`` in the default manager."""
    return sorted(_registry_cached(kind))


def gaussian_hook() -> Any:
    """The ``pdlt_gaussian_expectation`` hook caller of the default manager."""
    return default_manager().hook.pdlt_gaussian_expectation
