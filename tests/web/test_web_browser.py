"""The web extension in a real browser: headless Chromium against a stand-in for ComfyUI's page.

A local HTTP server (127.0.0.1, port 0) serves the pack's ``web/`` under ``/extensions/unet_lab/``
as ComfyUI does, stand-ins for ComfyUI_frontend's extension shims at ``/scripts/app.js`` and
``/scripts/api.js``, node definitions built from the pack's real node classes (``/object_info``
shape), and the scenario in ``tests/js/harness/``. Chromium loads it twice: ``--dump-dom`` to read
the results the page wrote, ``--screenshot`` for a picture (printed path; copied to
``web_screenshots/`` when ``UNETLAB_SAVE_SCREENSHOTS=1``). Skips when no Chromium is installed;
``scripts/ci_setup.sh`` installs it in CI.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import threading
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from PIL import Image

from pack_support import REPO_ROOT

WEB = REPO_ROOT / "web"
HARNESS = REPO_ROOT / "tests" / "js" / "harness"
PACK_URL = "/extensions/unet_lab"
OVERLAY_SIZE = (64, 48)
# Node types the extension decorates but whose classes may not exist yet: a bare definition
# with the name alone (the extension keys on the name) stands in for them.
DECORATED = ("UNetLabApplyLoRABlockWeights", "UNetLabBakeLoRA", "UNetLabLoadUNet", "UNetLabInspectUNet",
             "UNetLabSegmentImage")
CONTENT_TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".json": "application/json",
                 ".html": "text/html; charset=utf-8", ".md": "text/markdown; charset=utf-8", ".png": "image/png"}


def find_chromium() -> str | None:
    for name in (os.environ.get("UNETLAB_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _jsonable(value):
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)


def node_definitions() -> dict[str, dict]:
    """/object_info-shaped definitions of the pack's registered nodes (plus bare stand-ins)."""
    import unet_lab

    defs = {}
    for name, cls in unet_lab.NODE_CLASS_MAPPINGS.items():
        inputs = _jsonable(cls.INPUT_TYPES())
        defs[name] = {
            "name": name, "display_name": unet_lab.NODE_DISPLAY_NAME_MAPPINGS.get(name, name),
            "input": inputs, "input_order": {k: list(v) for k, v in inputs.items() if isinstance(v, dict)},
            "output": _jsonable(cls.RETURN_TYPES), "output_node": bool(getattr(cls, "OUTPUT_NODE", False)),
            "category": cls.CATEGORY, "description": getattr(cls, "DESCRIPTION", ""),
            "python_module": "custom_nodes.unet_lab",
        }
    for name in DECORATED:
        defs.setdefault(name, {"name": name, "display_name": f"{name} (stand-in)", "input": {"required": {}},
                               "output": [], "stand_in": True})
    return defs


def _overlay_png() -> bytes:
    image = Image.new("RGB", OVERLAY_SIZE, (30, 30, 30))
    for x in range(OVERLAY_SIZE[0] // 4, 3 * OVERLAY_SIZE[0] // 4):
        for y in range(OVERLAY_SIZE[1] // 4, 3 * OVERLAY_SIZE[1] // 4):
            image.putpixel((x, y), (220, 40, 40))
    buffer = BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class _Handler(BaseHTTPRequestHandler):
    def __init__(self, *args, routes, **kwargs):
        self.routes = routes
        super().__init__(*args, **kwargs)

    def log_message(self, format, *args):  # noqa: A002 - keep pytest output quiet
        pass

    def _send(self, body: bytes, content_type: str, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802 - http.server's name
        url = urlsplit(self.path)
        path = url.path
        self.routes["requests"].append(self.path)
        if path == "/api/view":
            self.routes["view_queries"].append(parse_qs(url.query))
            return self._send(self.routes["overlay_png"], "image/png")
        if path in self.routes["virtual"]:
            return self._send(self.routes["virtual"][path], "application/json")
        for prefix, folder in self.routes["folders"]:
            if path.startswith(prefix + "/"):
                target = (folder / path[len(prefix) + 1:]).resolve()
                if folder.resolve() in target.parents and target.is_file():
                    return self._send(target.read_bytes(), CONTENT_TYPES.get(target.suffix, "application/octet-stream"))
        return self._send(b"not found", "text/plain", 404)


@pytest.fixture
def web_server(standalone_host, tmp_path):
    loras = tmp_path / "models" / "loras"
    loras.mkdir(parents=True, exist_ok=True)
    (loras / "style.safetensors").write_bytes(b"")  # only listed, never read
    modules = sorted(f"{PACK_URL}/{p.relative_to(WEB).as_posix()}" for p in WEB.rglob("*.js"))
    routes = {
        "requests": [], "view_queries": [], "overlay_png": _overlay_png(),
        "virtual": {"/harness/node_defs.json": json.dumps(node_definitions()).encode(),
                    "/harness/extensions.json": json.dumps(modules).encode()},
        "folders": [(PACK_URL, WEB), ("/scripts", HARNESS / "scripts"), ("/harness", HARNESS)],
    }
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, routes=routes))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", routes
    finally:
        server.shutdown()
        server.server_close()


def _chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    command = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
               f"--user-data-dir={profile}", "--virtual-time-budget=20000", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


# Skipped on a developer machine without Chromium; in CI (CI=true) a missing Chromium fails the test.
@pytest.mark.skipif(find_chromium() is None and not os.environ.get("CI"),
                    reason="no chromium binary (scripts/ci_setup.sh installs it)")
def test_block_editor_in_headless_chromium(web_server, tmp_path):
    base, routes = web_server
    binary = find_chromium()
    page = f"{base}/harness/index.html"
    run = _chromium(binary, tmp_path / "profile-dom", "--dump-dom", page)
    match = re.search(r'<pre id="results">(.*?)</pre>', run.stdout, re.S)
    assert match and match.group(1), f"no results in the page\nstdout: {run.stdout[-2000:]}\nstderr: {run.stderr[-2000:]}"
    r = json.loads(html.unescape(match.group(1)))
    assert r["errors"] == [], r["errors"]

    # ComfyUI imports every .js under WEB_DIRECTORY; each must load on its own; one extension registers.
    assert f"{PACK_URL}/js/unet_lab.js" in r["modules"] and f"{PACK_URL}/js/block_spec.js" in r["modules"]
    assert r["extensionNames"] == ["UNetLab.Web"]
    assert "/scripts/app.js" in routes["requests"], "the extension must import the app shim at /scripts/app.js"

    # One slider per SD1 block (BASE, IN00–IN11, M00, OUT00–OUT11), in vector order.
    sd1 = ["BASE", *[f"IN{i:02d}" for i in range(12)], "M00", *[f"OUT{i:02d}" for i in range(12)]]
    assert r["sd1Blocks"] == sd1
    assert r["loraWidgets"][-1] == "block_weights"
    assert r["initialStatus"] == "empty: 1 everywhere"

    # Sliders -> spec string (named form, default first, runs as ranges).
    assert r["afterSliders"] == "default=1, IN04=0.5, M00=0, OUT03-04=0.2"
    assert r["textareaAfterSliders"] == r["afterSliders"]

    # Spec string -> sliders.
    expected = dict.fromkeys(sd1, 0.0)
    expected.update(dict.fromkeys([f"IN{i:02d}" for i in range(12)], 0.25))
    expected.update({"BASE": 1.0, "OUT05": 0.75, "OUT06": 0.75, "OUT07": 0.75})
    assert r["readBack"] == expected

    # A bad spec: the Python parser's message; the sliders keep their last good values.
    assert r["badStatus"] == ("block spec: unknown block 'IN12' in 'IN12'; this model has BASE, IN00–IN11, M00, "
                              "OUT00–OUT11 (groups: IN, OUT, MID)")
    assert r["badError"] == "1"
    assert r["slidersAfterBad"] == expected

    # The node's preset combo (SD-INS: 1,1,1,1 then 0 over the 17 attention blocks; others stay 1).
    ins = dict.fromkeys(sd1, 1.0)
    ins.update(dict.fromkeys(["IN05", "IN07", "IN08", "M00", *[f"OUT{i:02d}" for i in range(3, 12)]], 0.0))
    assert r["presetCombo"] == ins

    # SDXL: 20 blocks, its presets only; the editor's preset menu writes the vector form.
    sdxl = ["BASE", *[f"IN{i:02d}" for i in range(9)], "M00", *[f"OUT{i:02d}" for i in range(9)]]
    assert r["sdxlBlocks"] == sdxl
    assert r["familyProperty"] == "sdxl"
    assert r["presetMenu"][0] == "" and all(p.startswith("SDXL-") for p in r["presetMenu"][1:])
    assert r["presetMenuSpec"] == "1,0,0,0,0,1,0,0,0,0,0,0"
    # OUT08 is outside the 12-value vector: moving it needs the 20-value form
    # (BASE, IN00–IN08, M00, OUT00–OUT08; IN00–03, IN06, OUT06–07 stay at the short form's implied 1).
    assert r["vectorAfterSlider"] == "1,1,1,1,1,0,0,1,0,0,1,0,0,0,0,0,0,1,1,0"

    # The editor widget is not serialized: widgets_values hold the node's own inputs only, in order.
    values = r["serialized"]["widgets_values"]
    assert len(values) == len(r["loraWidgets"]) - 1
    assert values[-1] == r["vectorAfterSlider"]

    assert r["finalSpec"] == "default=1, IN01=0, IN02=0.25, IN04=0.5, IN05=0.75, M00=-0.5, OUT03=1.5"
    assert r["bakeHasEditor"] is True

    # Loading a saved workflow: the family comes back from the node's properties, sliders from the text.
    assert r["configured"]["family"] == "sdxl"
    assert r["configured"]["sliders"] == {**dict.fromkeys(sdxl, 0.5), "OUT08": 0.0}
    assert r["familyAfterRun"] == "sd1", "a run on an SD2 model switches the editor to the SD1/SD2 layout"

    # Inspect UNet: info lines, the file name as text (no element made from it).
    assert r["infoText"][:4] == ["family: sdxl", "dtype: float16", "Turbo: yes", "prediction: epsilon"]
    assert r["infoText"][4].startswith("file: <img src=x")
    assert r["infoHasImg"] == 0
    assert r["title"] != "pwned"

    # Load UNet's info sent as text: shown line by line; a message without text adds no panel.
    assert r["loadText"] == ["tiny_sdxl.safetensors (safetensors, 5.14 GB, 1680 tensors)",
                             "kind: UNet only; family: SDXL", "layout: ldm", "few-step model: SDXL-Turbo (name)"]
    assert "unet_info" not in r["quietWidgets"]

    # Segment Image: the overlay preview loads through /api/view with an encoded file name.
    assert r["overlay"]["width"] == OVERLAY_SIZE[0] and r["overlay"]["height"] == OVERLAY_SIZE[1]
    assert routes["view_queries"] and routes["view_queries"][0]["filename"] == ["overlay 1&x.png"]
    assert routes["view_queries"][0]["type"] == ["temp"]
    assert "foreground 25.0%" in r["overlay"]["caption"]
    assert r["segText"] == "1 image(s) 64 x 48 px, 1 tile pass(es)"

    # A picture of the same page.
    shot = tmp_path / "unet_lab_web.png"
    run = _chromium(binary, tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=1100,1150",
                    "--hide-scrollbars", page)
    assert shot.exists(), run.stderr[-2000:]
    with Image.open(shot) as image:
        assert image.size == (1100, 1150)
        assert len(image.convert("RGB").resize((64, 64)).getcolors(4096)) > 8, "blank screenshot"
    print(f"\nscreenshot: {shot}")
    if os.environ.get("UNETLAB_SAVE_SCREENSHOTS") == "1":
        out = REPO_ROOT / "web_screenshots"
        out.mkdir(exist_ok=True)
        shutil.copyfile(shot, out / shot.name)
        print(f"copied to {out / shot.name}")
