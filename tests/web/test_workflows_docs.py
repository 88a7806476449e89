"""The README's "## Nodes" table lists every registered node, as the node classes describe it."""

from __future__ import annotations

import re

from pack_support import REPO_ROOT, load_script
from unet_lab import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS


def _script():
    return load_script("scripts/make_node_table.py")


def _section() -> str:
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = _script().current_section(text)
    assert section is not None, "README.md has no '## Nodes' section"
    return section


def test_nodes_section_sits_between_two_commands_and_layout():
    headings = [line for line in (REPO_ROOT / "README.md").read_text().splitlines() if line.startswith("## ")]
    nodes = headings.index("## Nodes")
    assert headings[nodes - 1].startswith("## Two commands") and headings[nodes + 1] == "## Layout"


def test_table_has_one_row_per_registered_node_with_its_sockets():
    rows = [line for line in _section().splitlines() if line.startswith("| **")]
    keys = [re.search(r"<br>`(\w+)`", row).group(1) for row in rows]
    assert sorted(keys) == sorted(NODE_CLASS_MAPPINGS)  # every node, once
    for row, key in zip(rows, keys, strict=True):
        cls = NODE_CLASS_MAPPINGS[key]
        node, _what, inputs, outputs = [c.strip() for c in row.strip("|").split(" | ")]
        assert node.startswith(f"**{NODE_DISPLAY_NAME_MAPPINGS[key]}**")
        listed_inputs = [i.strip("*").split(":")[0] for i in inputs.split("<br>")]
        types = cls.INPUT_TYPES()
        assert listed_inputs == [*types.get("required", {}), *types.get("optional", {})], key
        names = getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES
        assert outputs.split("<br>") == [f"{n}: {t}" for n, t in zip(names, cls.RETURN_TYPES, strict=True)], key


def test_readme_section_is_what_the_script_renders_now():
    script = _script()
    fresh = script.render(NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS)
    assert _section() == fresh, "README '## Nodes' is stale: run .venv/bin/python scripts/make_node_table.py"
