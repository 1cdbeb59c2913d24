"""Write docs/api.md, the API reference, from the docstrings of the public names of ``pdlt``.

Usage::

    python docs/gen_api.py           # rewrite docs/api.md (the snapshot readable in the repository)
    python docs/gen_api.py --check   # exit 1 if docs/api.md differs from the docstrings

It is also an MkDocs hook (``hooks:`` in mkdocs.yml): the site's API page is generated from the
docstrings at build time, so the published reference never lags behind the code even when the
committed snapshot does.  It walks ``pdlt.__all__`` (and the optional modules in EXTRA_MODULES and the plugin classes that
``pdlt`` resolves by name), converts numpydoc sections to Markdown (parameter lists, fenced
doctest examples, Sphinx roles as code) and needs nothing but pdlt itself — no mkdocstrings.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "api.md"
#: Modules documented in addition to the modules listed in pdlt.__all__ (optional extras).
EXTRA_MODULES = ("pdlt.data", "pdlt.plotting", "pdlt.interop", "pdlt.testing")
#: Concrete classes that ``pdlt.<Name>`` looks up in the plugin registry.
PLUGIN_CLASSES = ("MLP", "ResidualMLP", "GradientDescent", "Bayesian", "NewtonStep", "GiantLeapSmallStep")
#: Public callables documented under a module (skip the dunder protocol, keep __call__).
_DUNDERS = ("__call__",)
_LIST_SECTIONS = ("Parameters", "Other Parameters", "Returns", "Yields", "Raises", "Warns", "Attributes")
_SECTION_RE = re.compile(r"^(\w[\w ]*)\n-{3,}\s*$", re.M)


# --------------------------------------------------------------------------------- docstrings
def _inline(text: str) -> str:
    """Sphinx roles and reST literals to Markdown code; stray '<' escaped."""
    text = re.sub(r":(?:func|class|meth|attr|mod|data|exc|obj):`(~?)([^`]+)`",
                  lambda m: f"`{m.group(2).split('.')[-1] if m.group(1) else m.group(2)}`", text)
    text = re.sub(r"``([^`]+)``", r"`\1`", text)
    # '<' starts raw HTML in Markdown; outside code spans it is always a comparison here
    parts = re.split(r"(`[^`]*`)", text)
    return "".join(p if p.startswith("`") else p.replace("<", "&lt;") for p in parts)


def _prose(block: str) -> str:
    lines = block.splitlines()
    out = []
    for line in lines:
        # numpydoc bullets are often indented continuation lines: keep them flush
        out.append(_inline(line.rstrip()))
    text = "\n".join(out).strip("\n")
    # a reST literal block ("::" + indented text) becomes a fenced block
    text = re.sub(r"::\n\n((?:    .*\n?|\n)+)", lambda m: ":\n\n```text\n" + inspect.cleandoc(m.group(1)) + "\n```\n", text + "\n")
    # a list right after a line of text needs a blank line before it in Markdown
    text = re.sub(r"([^\n])\n(\* |- |\d+\. )", r"\1\n\n\2", text)
    return text.strip("\n")


def _entries(block: str) -> str:
    """numpydoc 'name : type' entries with indented descriptions -> a Markdown list."""
    items: list[tuple[str, list[str]]] = []
    for line in block.splitlines():
        if not line.strip():
            if items:
                items[-1][1].append("")
            continue
        if not line.startswith((" ", "\t")):
            items.append((line.strip(), []))
        elif items:
            items[-1][1].append(line.strip())
        else:
            items.append(("", [line.strip()]))
    out = []
    for head, desc in items:
        name, sep, typ = head.partition(" : ")
        label = f"**{_inline(name)}**" + (f" (*{_inline(typ)}*)" if sep else "") if head else ""
        body = " ".join(d for d in desc if d)
        out.append(f"- {label}" + (f": {_inline(body)}" if body and label else _inline(body)))
    return "\n".join(out)


def _examples(block: str) -> str:
    return "```pycon\n" + block.strip("\n") + "\n```"


def docstring_markdown(doc: str | None) -> str:
    """A numpydoc docstring as Markdown."""
    if not doc:
        return "*(no docstring)*"
    doc = inspect.cleandoc(doc)
    pieces = _SECTION_RE.split(doc)
    out = [_prose(pieces[0])]
    for title, body in zip(pieces[1::2], pieces[2::2]):
        body = body.strip("\n")
        out.append(f"**{title}**")
        if title in _LIST_SECTIONS:
            out.append(_entries(body))
        elif title == "Examples":
            out.append(_examples(body))
        else:
            out.append(_prose(inspect.cleandoc(body)))
    return "\n\n".join(p for p in out if p)


# --------------------------------------------------------------------------------- objects
def _signature(obj, *, is_class: bool = False) -> str:
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return "(...)"
    text = re.sub(r" at 0x[0-9a-f]+", "", str(sig))
    # postponed annotations arrive as strings: show them unquoted (defaults keep their quotes)
    text = re.sub(r"(: |-> )\"'([^']*)'\"", r"\1\2", text)
    text = re.sub(r"(: |-> )'([^']*)'", r"\1\2", text)
    if is_class:
        text = re.sub(r" -> None$", "", text)
    return text


def _members(cls) -> tuple[list[tuple[str, property]], list[tuple[str, object]]]:
    """(properties, methods) defined by cls or its pdlt bases, each with its own docstring."""
    props, methods = [], []
    for name in sorted(dir(cls)):
        if name.startswith("_") and name not in _DUNDERS:
            continue
        owner = next((b for b in cls.__mro__ if name in b.__dict__), None)
        if owner is None or not owner.__module__.startswith(("pdlt", "pdlt_plugins")):
            continue  # inherited from object or a third-party base
        raw = owner.__dict__[name]
        func = raw.__func__ if isinstance(raw, (staticmethod, classmethod)) else raw
        if isinstance(raw, property):
            if raw.__doc__:
                props.append((name, raw))
        elif inspect.isfunction(func) and func.__doc__:
            methods.append((name, getattr(cls, name)))
    return props, methods


def _code(text: str) -> str:
    return f"```python\n{text}\n```"


def _document(qualname: str, obj, level: int) -> list[str]:
    h = "#" * level
    if inspect.isclass(obj):
        kind = "exception" if issubclass(obj, BaseException) else "class"
        lines = [f"{h} `{qualname}`", "", _code(f"{kind} {qualname}{_signature(obj, is_class=True)}"), "",
                 docstring_markdown(obj.__doc__), ""]
        props, methods = _members(obj)
        if props:
            lines += ["**Properties**", ""]
            lines += [f"- **`{name}`**: {_inline(' '.join(inspect.cleandoc(p.__doc__).split()))}" for name, p in props]
            lines += [""]
        for name, member in methods:
            lines += [f"{'#' * (level + 1)} `{obj.__name__}.{name}`", "", _code(f"{obj.__name__}.{name}{_signature(member)}"),
                      "", docstring_markdown(inspect.getdoc(member)), ""]
        return lines
    if callable(obj):
        return [f"{h} `{qualname}`", "", _code(f"{qualname}{_signature(obj)}"), "", docstring_markdown(inspect.getdoc(obj)), ""]
    return [f"{h} `{qualname}`", "", _code(f"{qualname} = {obj!r}"), ""]


def _module_section(modname: str, seen: dict[int, str]) -> list[str]:
    try:
        mod = importlib.import_module(modname)
    except ImportError:  # an optional module this checkout does not have
        return []
    lines = [f"## `{modname}`", "", docstring_markdown(mod.__doc__), ""]
    again = []
    for name in getattr(mod, "__all__", []):
        obj = getattr(mod, name, None)
        if obj is None or inspect.ismodule(obj) or not (inspect.isclass(obj) or callable(obj)):
            continue  # constants are described in the module docstring
        if id(obj) in seen:
            again.append(f"`{name}` (see `{seen[id(obj)]}`)")
            continue
        seen[id(obj)] = f"{modname}.{name}"
        lines += _document(f"{modname}.{name}", obj, 3)
    if again:
        lines += ["Also exported here: " + ", ".join(again) + ".", ""]
    return lines


def generate() -> str:
    import pdlt

    top, modules = [], []
    for name in pdlt.__all__:
        obj = getattr(pdlt, name)
        if inspect.ismodule(obj):
            modules.append(obj.__name__)
        elif name != "__version__":
            top.append((name, obj))
    plugin_classes = []
    for name in PLUGIN_CLASSES:
        try:
            plugin_classes.append((name, getattr(pdlt, name)))
        except (AttributeError, LookupError):
            continue  # not registered in this checkout
    lines = [
        "# API reference",
        "",
        "<!-- Generated by docs/gen_api.py from the docstrings; do not edit by hand. "
        "Regenerate with `python docs/gen_api.py`. -->",
        "",
        "The public names of `import pdlt` (`pdlt.__all__`), the classes it resolves by name from the "
        "plugin registry, and the modules `" + "`, `".join(dict.fromkeys(modules + list(EXTRA_MODULES))) + "`. "
        "Symbols and normalisations: [notation](notation.md).",
        "",
        "## `pdlt`",
        "",
        docstring_markdown(pdlt.__doc__),
        "",
    ]
    seen: dict[int, str] = {}
    for name, obj in top:
        seen[id(obj)] = f"pdlt.{name}"
        lines += _document(f"pdlt.{name}", obj, 3)
    if plugin_classes:
        lines += ["## Classes resolved by name (`pdlt.MLP`, …)", "",
                  "Concrete classes provided by the built-in plugins and returned by `pdlt.<Name>`.", ""]
        for name, obj in plugin_classes:
            lines += _document(f"pdlt.{name}", obj, 3)
    for modname in dict.fromkeys(modules + list(EXTRA_MODULES)):
        lines += _module_section(modname, seen)
    text = "\n".join(lines)
    text = re.sub(r"\n{3,}", "\n\n", text).rstrip() + "\n"
    return text


def on_page_read_source(page, config):
    """MkDocs hook: serve api.md freshly generated from the docstrings."""
    if page.file.src_uri == OUT.name:
        return generate()
    return None


def main(argv: list[str]) -> int:
    text = generate()
    if "--check" in argv:
        if not OUT.exists() or OUT.read_text(encoding="utf-8") != text:
            print(f"{OUT} is out of date: run `python docs/gen_api.py`.", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
