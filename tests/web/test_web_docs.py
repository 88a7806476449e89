"""Help pages: every registered node has one where ComfyUI_frontend looks for it.

ComfyUI_frontend's node help fetches ``/extensions/<pack>/docs/<NodeType>/<locale>.md`` and falls
back to ``/extensions/<pack>/docs/<NodeType>.md``; ComfyUI serves ``WEB_DIRECTORY`` (``./web``) as
``/extensions/<pack>/``. So the page of ``UNetLabBakeLoRA`` is ``web/docs/UNetLabBakeLoRA/en.md``,
the one the frontend asks for first (no 404 before the fallback). Each page must name the node and every input and output,
so a page cannot silently fall behind its node.
"""

from __future__ import annotations

import re

import pytest

import unet_lab
from pack_support import REPO_ROOT

DOCS = REPO_ROOT / unet_lab.WEB_DIRECTORY / "docs"
NODES = sorted(unet_lab.NODE_CLASS_MAPPINGS)


def _page(name: str):
    candidate = DOCS / name / "en.md"
    return candidate if candidate.is_file() else None


def test_web_directory_is_web():
    assert unet_lab.WEB_DIRECTORY in ("./web", "web")
    assert DOCS.is_dir()


@pytest.mark.parametrize("name", NODES)
def test_every_node_has_a_help_page(name):
    page = _page(name)
    assert page is not None, (f"no help page for {name}: write web/docs/{name}/en.md "
                              f"(ComfyUI_frontend fetches /extensions/<pack>/docs/{name}/en.md first)")
    text = page.read_text(encoding="utf-8")
    cls = unet_lab.NODE_CLASS_MAPPINGS[name]
    title = text.splitlines()[0]
    display = unet_lab.NODE_DISPLAY_NAME_MAPPINGS.get(name, name)
    assert title == f"# {display}", f"{page.name}: the first line must be '# {display}'"
    inputs = cls.INPUT_TYPES()
    names = [n for group in ("required", "optional") for n in inputs.get(group, {})]
    missing = [n for n in names if f"`{n}`" not in text]
    assert not missing, f"{page.name} does not describe the inputs {missing}"
    outputs = list(getattr(cls, "RETURN_NAMES", None) or [t.lower() for t in cls.RETURN_TYPES])
    missing = [n for n in outputs if f"`{n}`" not in text]
    assert not missing, f"{page.name} does not describe the outputs {missing}"
    assert re.search(r"^## Inputs", text, re.M) or not names, f"{page.name}: no '## Inputs' section"
    if cls.RETURN_TYPES:
        assert re.search(r"^## Outputs", text, re.M), f"{page.name}: no '## Outputs' section"


def test_no_orphan_help_pages():
    assert not list(DOCS.glob("*.md")), "help pages go in web/docs/<NodeType>/en.md"
    pages = {p.parent.name for p in DOCS.glob("*/en.md")}
    orphans = sorted(pages - set(NODES))
    assert not orphans, f"help pages for nodes that are not registered: {orphans}"
