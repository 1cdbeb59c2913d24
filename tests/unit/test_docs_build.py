"""The documentation site builds cleanly, lists every page, its API reference is current, and the
user guide's Python examples run as written."""

from __future__ import annotations

import importlib.util
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
MKDOCS_YML = ROOT / "mkdocs.yml"


def nav_pages() -> list[str]:
    """The .md files named in the nav of mkdocs.yml (read without a YAML parser)."""
    text = MKDOCS_YML.read_text(encoding="utf-8")
    nav = text[text.index("\nnav:") :]
    return re.findall(r"^\s+-\s+[^:\n]+:\s+(\S+\.md)\s*$", nav, flags=re.M)


def test_nav_lists_every_page_and_only_existing_ones():
    pages = nav_pages()
    assert pages and pages[0] == "index.md"
    missing = [p for p in pages if not (DOCS / p).is_file()]
    assert not missing, f"mkdocs.yml's nav names pages that do not exist in docs/: {missing}"
    unlisted = sorted(p.name for p in DOCS.glob("*.md") if p.name not in pages)
    assert not unlisted, f"docs/ pages missing from the nav of mkdocs.yml: {unlisted}"


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(MKDOCS_YML),
         "--site-dir", str(tmp_path / "site")],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    for page in ("index.html", "user-guide/index.html", "api/index.html"):
        assert (tmp_path / "site" / page).is_file(), page
    assert "sklearn_kernel" in (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8")


def _gen_api():
    spec = importlib.util.spec_from_file_location("gen_api", DOCS / "gen_api.py")
    gen_api = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen_api)
    return gen_api


def _sections(markdown: str) -> list[str]:
    """Module and public-name headings (## and ###) of the API reference."""
    return re.findall(r"^#{2,3} (.+)$", markdown, flags=re.M)


def test_api_reference_covers_the_public_api():
    # The site regenerates api.md at build time (a hook in gen_api.py); the committed snapshot
    # must at least list every public name, so that nothing public goes undocumented there.
    expected = _gen_api().generate()
    for name in ("pdlt.flow", "pdlt.criticality", "pdlt.ensemble.sample", "pdlt.plotting.plot_flow",
                 "pdlt.interop.sklearn_kernel"):
        assert f"### `{name}`" in expected, name
    snapshot = (DOCS / "api.md").read_text(encoding="utf-8")
    missing = sorted(set(_sections(expected)) - set(_sections(snapshot)))
    stale = sorted(set(_sections(snapshot)) - set(_sections(expected)))
    assert not missing and not stale, (
        f"docs/api.md does not match the public API (missing {missing}, stale {stale}): run `python docs/gen_api.py`."
    )


def _blocks(path: pathlib.Path) -> list[tuple[str | None, str]]:
    """(needed module or None, code) for every ```python block, in order."""
    text = path.read_text(encoding="utf-8")
    pattern = r"(?:<!--\s*needs:\s*([\w.]+)\s*-->\s*\n)?```python\n(.*?)```"
    return [(m.group(1), m.group(2)) for m in re.finditer(pattern, text, flags=re.S)]


def test_user_guide_examples_run(tmp_path):
    # a fresh interpreter, so that nothing imported by other tests hides a missing import
    blocks = _blocks(DOCS / "user-guide.md")
    assert len(blocks) >= 6, "the user guide lost its examples"
    runnable = [code for needs, code in blocks if not needs or importlib.util.find_spec(needs) is not None]
    script = tmp_path / "user_guide.py"
    script.write_text("\n".join(f"# --- block {i}\n{code}" for i, code in enumerate(runnable)), encoding="utf-8")
    result = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", str(script)], capture_output=True,
                            text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, f"docs/user-guide.md examples failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
