"""The web extension's block-spec logic against the Python parser, and the node test suite.

* ``web/js/lbw_presets.js`` must carry exactly the presets of ``unet_core/lora/blocks.py``
  (regenerate with ``scripts/gen_web_presets.py``).
* ``web/js/block_spec.js`` must read every spec of a corpus to the same weights, or fail with the
  same message, as ``parse_block_spec`` does (the Python parser is the reference).
* ``node --test tests/js/`` runs the JS unit tests (skipped when node is missing).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from pack_support import REPO_ROOT, load_script
from unet_lab.unet_core.errors import BlockSpecError
from unet_lab.unet_core.lora import blocks
from unet_lab.unet_core.unet_config import SD1_CONFIG, SDXL_CONFIG

NODE = shutil.which("node")
# Skipped on a developer machine without Node.js; in CI (CI=true) a missing node fails the tests.
needs_node = pytest.mark.skipif(NODE is None and not os.environ.get("CI"), reason="node (Node.js) is not installed")
LAYOUTS = {"sd1": blocks.BlockLayout.from_config(SD1_CONFIG), "sdxl": blocks.BlockLayout.from_config(SDXL_CONFIG)}


def _gen_module():
    return load_script("scripts/gen_web_presets.py")


def test_web_presets_match_python_presets():
    text = (REPO_ROOT / "web" / "js" / "lbw_presets.js").read_text(encoding="utf-8")
    data = _gen_module().parse(text)
    assert data["no_preset"] == blocks.NO_PRESET
    assert data["presets"] == dict(blocks.PRESETS), (
        "web/js/lbw_presets.js is stale: run .venv/bin/python scripts/gen_web_presets.py")
    assert list(data["presets"]) == list(blocks.PRESETS), "preset order differs (the menus list them in order)"


def _corpus() -> list[tuple[str, str, str | None]]:
    sd1_17 = ",".join(str(i / 10) for i in range(17))
    sdxl_20 = " ".join(str((i % 4) * 0.25) for i in range(20))
    specs = [
        "", "   ", "# comment only", sd1_17, sdxl_20, "1,1,1", ",1,2", "1,2,abc", "1;0;1\n0",
        "default=0.5, IN=0, OUT03-05=0.2 # tail\nM00=1; in04 : 0.7",
        "IN04=0.5, OUT03-05=0.2, M00=0", "default=0, BASE=1, OUT00-OUT02=1", "OUT=0.3, MID=0", "M=0.2",
        "IN4=0.5, out5=1", "IN09=0", "IN12=0", "OUT05-03=0", "IN01-OUT03=0", "default=1, default=0",
        "IN=1, in=0", "M=1, MID=0", "IN04=1, IN03-05=0", "IN04=1, 0.5", "=1", "=x", "FOO=1", "IN04=x",
        "IN04=inf", "IN04=nan", "IN04=-Infinity", "IN04=1e-3, IN05=+.5, IN06=-2., IN07=1_0", "IN04=0x10",
        "IN00=", "BASE=0.25", "base=0", "m00=0", "M0=0.5", "OUT8=0", "OUT00 - 02 = 0.5",
        ",".join(["1"] * 12), ",".join(["0.5"] * 26), "it's=1", "IN04=1,,IN05=0",
    ]
    cases = []
    for family in ("sd1", "sdxl"):
        for spec in specs:
            cases.append((spec, family, None))
        for preset in ("SD-INS", "SDXL-OUTALL", blocks.NO_PRESET, "NOPE"):
            for spec in ("", "OUT00=0.3, MID=0.9", "default=0"):
                cases.append((spec, family, preset))
    return cases


def _python(spec: str, family: str, preset: str | None) -> dict:
    try:
        return {"weights": blocks.parse_block_spec(spec, LAYOUTS[family], preset)}
    except BlockSpecError as exc:
        return {"error": str(exc)}


_JS_DRIVER = """
import { parseBlockSpec, BlockSpecError } from "./web/js/block_spec.js";
import { readFileSync } from "node:fs";
const cases = JSON.parse(readFileSync(0, "utf8"));
const out = cases.map(([spec, family, preset]) => {
  try { return { weights: parseBlockSpec(spec, family, preset) }; }
  catch (e) { if (e instanceof BlockSpecError) return { error: e.message }; throw e; }
});
process.stdout.write(JSON.stringify(out));
"""


@needs_node
def test_js_parser_agrees_with_python_parser():
    cases = _corpus()
    proc = subprocess.run([NODE, "--input-type=module", "-e", _JS_DRIVER], input=json.dumps(cases),
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    assert len(results) == len(cases)
    errors = 0
    for (spec, family, preset), js in zip(cases, results, strict=True):
        py = _python(spec, family, preset)
        where = f"spec={spec!r} family={family} preset={preset!r}"
        if "error" in py:
            errors += 1
            assert js.get("error") == py["error"], where
        else:
            assert "weights" in js, f"{where}: JS failed with {js.get('error')!r}"
            assert js["weights"].keys() == py["weights"].keys(), where
            for block, value in py["weights"].items():
                assert js["weights"][block] == pytest.approx(value, abs=0, rel=1e-12), f"{where} {block}"
    assert 20 < errors < len(cases) - 20, "the corpus must hold both good and bad specs"


@needs_node
def test_node_unit_tests_pass():
    # The files by name: `node --test <dir>` finds them on Node 18-20, newer Node reads globs instead.
    files = sorted(str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "tests" / "js").glob("*.test.mjs"))
    assert len(files) >= 2
    proc = subprocess.run([NODE, "--test", *files], capture_output=True, text=True, cwd=REPO_ROOT,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "# fail 0" in proc.stdout
