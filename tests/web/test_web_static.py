"""Static checks of the web files, run with or without a browser or Node.js.

* No HTML is built from strings (``innerHTML`` and friends): user text such as file names must
  reach the page through ``textContent`` / DOM nodes.
* Imports of ComfyUI_frontend's shims (``scripts/app.js``, ``scripts/api.js``) resolve, from where
  ComfyUI serves the file (``/extensions/<pack>/<path under web>``), to ``/scripts/…``.
* Relative imports between our modules point at files that exist.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urljoin

import pytest

from pack_support import REPO_ROOT

WEB = REPO_ROOT / "web"
JS_FILES = sorted(WEB.rglob("*.js"))
IMPORT_RE = re.compile(r"""(?:^|\n)\s*import\s+(?:[^'"]*?\s+from\s+)?["']([^"']+)["']""")
HTML_SINKS = re.compile(r"\.(innerHTML|outerHTML)\s*[+]?=|insertAdjacentHTML|document\.write|createContextualFragment")


def _code(path: Path) -> str:
    """The file without // and /* */ comments (strings are left alone; good enough for these checks)."""
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"(^|[^:])//[^\n]*", r"\1", text)


def test_there_are_web_files():
    names = {p.name for p in JS_FILES}
    assert {"unet_lab.js", "block_spec.js"} <= names


@pytest.mark.parametrize("path", JS_FILES, ids=lambda p: p.relative_to(WEB).as_posix())
def test_no_html_from_strings(path):
    hits = HTML_SINKS.findall(_code(path))
    assert not hits, f"{path.relative_to(REPO_ROOT)} builds HTML from strings: {hits}"


@pytest.mark.parametrize("path", JS_FILES, ids=lambda p: p.relative_to(WEB).as_posix())
def test_imports_resolve_where_comfyui_serves_the_file(path):
    served = f"http://comfy.local/extensions/unet_lab/{path.relative_to(WEB).as_posix()}"
    for spec in IMPORT_RE.findall(_code(path)):
        url = urljoin(served, spec)
        if spec.endswith(("scripts/app.js", "scripts/api.js")):
            want = "http://comfy.local/scripts/" + spec.rsplit("/", 1)[1]
            assert url == want, f"{path.name}: {spec!r} resolves to {url}, not {want}"
        else:
            assert spec.startswith("./") or spec.startswith("../"), f"{path.name}: bare import {spec!r} (no bundler)"
            assert url.startswith("http://comfy.local/extensions/unet_lab/"), f"{path.name}: {spec!r} leaves the pack"
            target = WEB / url.split("/extensions/unet_lab/", 1)[1]
            assert target.is_file(), f"{path.name}: {spec!r} -> {target} does not exist"


def test_only_the_entry_touches_comfyui():
    """Pure and DOM modules stay importable without ComfyUI (ComfyUI imports each .js on its own)."""
    touching = sorted(p.name for p in JS_FILES if re.search(r"scripts/(app|api)\.js", _code(p)))
    assert touching == ["unet_lab.js"]
