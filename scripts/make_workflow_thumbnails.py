"""Draw a thumbnail for every workflow in ``workflows/``: a diagram of its nodes and links.

    .venv/bin/python scripts/make_workflow_thumbnails.py

ComfyUI's template browser shows ``<name>.jpg`` beside ``<name>.json`` in a custom
node pack's example workflow folder. The picture is drawn from the JSON alone (node
boxes at their canvas positions, coloured by kind, links as curves, titles as text):
it is a map of the graph, not an image the workflow produced.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

REPO_ROOT = Path(__file__).resolve().parents[1]
SIZE = (512, 384)
MARGIN = 18
BACKGROUND = (32, 33, 38)
LINK_COLOURS = {"MODEL": (180, 160, 255), "CLIP": (255, 210, 0), "VAE": (255, 100, 100),
                "CONDITIONING": (255, 160, 60), "LATENT": (255, 150, 200), "IMAGE": (100, 180, 230),
                "MASK": (130, 220, 150), "SEG_UNET": (90, 230, 230)}
log = logging.getLogger("make_workflow_thumbnails")


def _fill(node_type: str) -> tuple[int, int, int]:
    if node_type in ("Note", "MarkdownNote"):
        return (102, 85, 51)
    if node_type.startswith("UNetLab"):
        return (40, 90, 120)
    return (62, 62, 68)


def _label(node: dict[str, Any]) -> str:
    if node.get("type") in ("Note", "MarkdownNote"):
        return "Note: model files"
    if node.get("title"):
        return node["title"]
    name = node.get("type", "?").replace("UNetLab", "")
    return "".join(f" {c}" if c.isupper() and i and not name[i - 1].isupper() else c for i, c in enumerate(name))


def _font(size: int) -> Any:
    for name in ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default()


def draw(workflow: dict[str, Any], title: str) -> Image.Image:
    """The diagram of a UI workflow, scaled to fit the thumbnail."""
    nodes = {n["id"]: n for n in workflow["nodes"]}
    x0 = min(n["pos"][0] for n in nodes.values())
    y0 = min(n["pos"][1] for n in nodes.values())
    x1 = max(n["pos"][0] + n["size"][0] for n in nodes.values())
    y1 = max(n["pos"][1] + n["size"][1] for n in nodes.values())
    top = 34
    # x and y scale separately (wide graphs would otherwise be a thin strip): a map, not a screenshot
    scale_x = (SIZE[0] - 2 * MARGIN) / (x1 - x0)
    scale_y = min((SIZE[1] - top - MARGIN) / (y1 - y0), 3 * scale_x)

    def box(node: dict[str, Any]) -> tuple[float, float, float, float]:
        left = MARGIN + (node["pos"][0] - x0) * scale_x
        upper = top + (node["pos"][1] - y0) * scale_y
        return left, upper, left + node["size"][0] * scale_x, upper + node["size"][1] * scale_y

    image = Image.new("RGB", SIZE, BACKGROUND)
    pen = ImageDraw.Draw(image)
    pen.text((MARGIN, 8), title, fill=(235, 235, 235), font=_font(15))
    for link in workflow.get("links") or []:
        _id, origin, origin_slot, target, target_slot, kind = link[:6]
        a, b = box(nodes[origin]), box(nodes[target])
        start = (a[2], a[1] + 10 + 9 * origin_slot)
        end = (b[0], b[1] + 10 + 9 * target_slot)
        points = [(start[0] + (end[0] - start[0]) * t / 16 + 0.0,
                   start[1] + (end[1] - start[1]) * (3 * (t / 16) ** 2 - 2 * (t / 16) ** 3)) for t in range(17)]
        pen.line(points, fill=LINK_COLOURS.get(str(kind), (200, 200, 200)), width=2)
    label_font = _font(9)
    for node in nodes.values():
        rect = box(node)
        pen.rounded_rectangle(rect, radius=4, fill=_fill(node.get("type", "")), outline=(150, 150, 160))
        width = rect[2] - rect[0] - 6
        lines, line = [], ""
        for word in _label(node).replace("(", " (").split():
            trial = f"{line} {word}".strip()
            if line and pen.textlength(trial, font=label_font) > width:
                lines.append(line)
                line = word
            else:
                line = trial
        lines.append(line)
        rows = max(1, int((rect[3] - rect[1] - 4) // 11))
        for row, text in enumerate(lines[:rows]):
            while text and pen.textlength(text, font=label_font) > width:
                text = text[:-1]
            pen.text((rect[0] + 3, rect[1] + 3 + 11 * row), text, fill=(240, 240, 240), font=label_font)
    return image


def write_thumbnail(json_path: Path) -> Path:
    workflow = json.loads(json_path.read_text(encoding="utf-8"))
    title = json_path.stem.replace("unet_lab_", "").replace("_", " ")
    image = draw(workflow, f"UNet Lab: {title}")
    target = json_path.with_suffix(".jpg")
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name, suffix=".tmp")
    os.close(fd)
    image.save(tmp, format="JPEG", quality=85)
    os.chmod(tmp, 0o644)
    os.replace(tmp, target)
    return target


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    folder = REPO_ROOT / "workflows"
    for path in sorted(folder.glob("*.json")):
        target = write_thumbnail(path)
        log.info("wrote %s (%d bytes)", target.relative_to(REPO_ROOT), target.stat().st_size)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
