"""The Python examples in docs/*.md run as written (the plugin-author guide is a tested example)."""

import pathlib
import re
import sys
import types

import pytest

DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs"


def python_blocks(path):
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


@pytest.mark.parametrize("page", ["plugins.md"])
def test_doc_examples_run(page, monkeypatch):
    # a real module, so that classes defined in the examples can be pickled
    module = types.ModuleType("docs_example")
    monkeypatch.setitem(sys.modules, "docs_example", module)
    blocks = python_blocks(DOCS / page)
    assert blocks, f"no python examples in {page}"
    for block in blocks:
        exec(compile(block, f"{page}", "exec"), module.__dict__)
