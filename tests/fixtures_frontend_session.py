"""One browser session on the real ComfyUI frontend, served by ``fixtures_frontend`` (tests/web/).

``FrontendSession`` prepares a standalone host (empty model files under the names the workflows
pick, a small real segmentation U-Net, LoRA files whose headers name SD1 or SDXL, an input
image), starts the harness server, opens the page in Debian's Chromium through Playwright at
1600 x 1000, and offers what the tests do as a user would: load a workflow and measure it
(``LoadReport``), drag sliders, pick presets, type, queue a run and read the panels.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fixtures_frontend import (
    FrontendServer,
    HarnessState,
    core_object_info,
    frontend_root,
    iter_widget_files,
    pack_object_info,
)

VIEWPORT = {"width": 1600, "height": 1000}
# 404s a real ComfyUI gives too: user files the user has not made.
EXPECTED_404_PREFIXES = ("/api/userdata/",)
LORA_FILES = {"sdxl_style_lora.safetensors": 2048, "sd15_lora.safetensors": 768}  # name -> context width

_MEASURE_JS = """
async () => {
  const app = window.app;
  const wait = (ms) => new Promise((r) => setTimeout(r, ms));
  for (let i = 0; i < 50; i++) {  // images (Load Image previews) and DOM widgets settle
    const pending = app.graph.nodes.some((n) => (n.imgs || []).some((img) => !img.complete));
    if (!pending) break;
    await wait(100);
  }
  await wait(300);
  app.canvas.setDirty(true, true);
  app.canvas.draw(true, true);
  const types = app.graph.nodes.map((n) => n.type);
  const missing = [...new Set(types.filter((t) => !LiteGraph.registered_node_types[t]))];
  const boxes = app.graph.nodes.map((n) => {
    const b = n.getBounding();  // [x, y, w, h] with the title bar
    const min = n.computeSize ? n.computeSize() : [0, 0];
    const title = LiteGraph.NODE_TITLE_HEIGHT;
    const w = Math.max(b[2], min[0]);
    const h = Math.max(b[3], min[1] + (n.collapsed ? 0 : title));
    return {id: n.id, x: b[0], y: b[1], w, h};
  });
  const overlaps = [];
  for (let i = 0; i < boxes.length; i++) {
    for (let j = i + 1; j < boxes.length; j++) {
      const a = boxes[i], c = boxes[j];
      const dx = Math.min(a.x + a.w, c.x + c.w) - Math.max(a.x, c.x);
      const dy = Math.min(a.y + a.h, c.y + c.h) - Math.max(a.y, c.y);
      if (dx > 0 && dy > 0) overlaps.push([a.id, c.id, Math.round(dx * dy)]);
    }
  }
  const prompt = (await app.graphToPrompt()).output;
  await app.extensionManager.command.execute("Comfy.Canvas.FitView");
  let last = -1;
  for (let i = 0; i < 40 && app.canvas.ds.scale !== last; i++) {  // the view animates to the fit
    last = app.canvas.ds.scale;
    await wait(100);
  }
  app.canvas.setDirty(true, true);
  app.canvas.draw(true, true);
  return {missing, overlaps, boxes, prompt, fitScale: app.canvas.ds.scale, lowQuality: app.canvas.low_quality};
}
"""


@dataclass
class LoadReport:
    """What the frontend made of one workflow."""

    missing_types: list[str]
    errors: list[str]
    unexpected_requests: list[str]
    overlaps: list[list[int]]
    prompt: dict[str, Any]
    fit_scale: float
    low_quality_at_fit: bool
    boxes: list[dict[str, float]] = field(default_factory=list)


def playwright_available() -> bool:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False
    return True


def chromium_binary() -> str | None:
    import os

    for name in (os.environ.get("UNETLAB_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _write_lora(path: Path, context_width: int) -> None:
    """A LoRA file whose header tells its family (cross-attention width); tensors are tiny zeros."""
    import torch
    from safetensors.torch import save_file

    block = "input_blocks_4_1_transformer_blocks_0_attn2_to_k"
    save_file({f"lora_unet_{block}.lora_down.weight": torch.zeros(1, context_width, dtype=torch.float16),
               f"lora_unet_{block}.lora_up.weight": torch.zeros(640, 1, dtype=torch.float16)}, str(path))


def _prepare_files(host: Any, workflows: list[dict[str, Any]]) -> set[str]:
    """Model and input files under the names the workflows pick; returns those names."""
    import numpy as np
    from PIL import Image

    from unet_lab.nodes.segmentation import UNetLabLoadSegmentationUNet, UNetLabSaveSegmentationUNet

    names = set(iter_widget_files(workflows)) | set(LORA_FILES)
    for folder in ("checkpoints", "diffusion_models", "unet_segmentation"):
        for name in names:
            if name.endswith(".safetensors"):
                target = host.save_directory(folder) / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(b"")
    for name, width in LORA_FILES.items():
        _write_lora(host.save_directory("loras") / name, width)
    seg, _info = UNetLabLoadSegmentationUNet().load("(new) unet", depth=2, base_channels=4, classes=1)
    saved = Path(UNetLabSaveSegmentationUNet().save(seg, filename_prefix="tmp/seg")["result"][0])
    for name in names:
        if name.startswith("my_segmentation"):
            shutil.copyfile(saved, host.save_directory("unet_segmentation") / name)
    rng = np.random.default_rng(0)
    image = (rng.random((40, 48, 3)) * 255).astype(np.uint8)
    inputs = Path(host.input_directory())
    inputs.mkdir(parents=True, exist_ok=True)
    for name in names:
        if name.endswith((".png", ".tif", ".tiff")):
            Image.fromarray(image).save(inputs / name)
    return names


class FrontendSession:
    """The harness server plus one Chromium page on it (a context manager)."""

    def __init__(self, tmp: Path, workflows: list[dict[str, Any]]) -> None:
        self.tmp = tmp
        self.workflows = workflows
        self.console: list[str] = []

    def __enter__(self) -> FrontendSession:
        from playwright.sync_api import sync_playwright

        from unet_lab.nodes.host import StandaloneHost, set_host

        self.host = StandaloneHost(models_root=self.tmp / "models", output_dir=self.tmp / "output",
                                   input_dir=self.tmp / "input", device="cpu", show_progress=False)
        set_host(self.host)
        names = _prepare_files(self.host, self.workflows)
        self.state = HarnessState(host=self.host, object_info={**core_object_info(names), **pack_object_info()})
        self.server = FrontendServer(self.state, frontend_root()).__enter__()
        self._playwright = sync_playwright().start()
        self.browser = self._playwright.chromium.launch(executable_path=chromium_binary(),
                                                        args=["--no-sandbox", "--disable-gpu"])
        self.page = self.browser.new_page(viewport=VIEWPORT)
        self.page.route("**/*", self._route)
        self.page.on("console", lambda m: m.type == "error" and self.console.append(m.text))
        self.page.on("pageerror", lambda e: self.console.append(f"page error: {e}"))
        self.page.goto(self.server.url)
        self.page.wait_for_function("() => window.app?.graph && window.app?.extensionManager?.command",
                                    timeout=60_000)
        return self

    def __exit__(self, *exc: object) -> None:
        from unet_lab.nodes.host import set_host

        try:
            self.browser.close()
            self._playwright.stop()
        finally:
            self.server.__exit__(*exc)
            set_host(None)

    def _route(self, route: Any) -> None:
        """Requests leave 127.0.0.1 never: the frontend's calls to outside services get an empty list."""
        if route.request.url.startswith(self.server.url):
            route.continue_()
        else:
            route.fulfill(status=200, content_type="application/json", body="[]")

    # -- loading and measuring ------------------------------------------------------------------------------
    def load(self, workflow: dict[str, Any]) -> LoadReport:
        self.console.clear()
        self.state.missing.clear()
        for _ in range(2):  # close what an earlier load opened (the missing-nodes dialog)
            self.page.keyboard.press("Escape")
        self.page.evaluate("async (wf) => { await window.app.loadGraphData(wf, true, true, 'test'); }", workflow)
        result = self.page.evaluate(_MEASURE_JS)
        errors = [m for m in self.console if not m.startswith("Failed to load resource")]
        unexpected = [p for p in self.state.missing if not p.startswith(EXPECTED_404_PREFIXES)]
        prompt = {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in result["prompt"].items()}
        return LoadReport(result["missing"], errors, unexpected, result["overlaps"], prompt, result["fitScale"],
                          bool(result["lowQuality"]), result["boxes"])

    def our_prompt(self, workflow: dict[str, Any]) -> dict[str, Any]:
        from unet_lab.nodes.host.headless import node_classes
        from unet_lab.unet_core.graph.execute import Executor

        prompt, _extra = Executor(node_classes()).to_prompt(json.loads(json.dumps(workflow)))
        return {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in prompt.items()}

    def screenshot(self, path: Path) -> None:
        self.page.screenshot(path=str(path))

    # -- the block editor -----------------------------------------------------------------------------------
    def _node_js(self, node_type: str) -> str:
        return f"window.app.graph.nodes.find((n) => n.type === {json.dumps(node_type)})"

    def widget_value(self, node_type: str, name: str) -> Any:
        return self.page.evaluate(f"() => {self._node_js(node_type)}.widgets.find((w) => w.name === "
                                  f"{json.dumps(name)}).value")

    def set_combo(self, node_type: str, name: str, value: str) -> None:
        """Pick a combo value as the widget's menu does (value, then its callback), then let lookups finish."""
        self.page.evaluate(f"""async () => {{
          const node = {self._node_js(node_type)};
          const w = node.widgets.find((x) => x.name === {json.dumps(name)});
          w.value = {json.dumps(value)};
          w.callback?.(w.value, window.app.canvas, node);
          await node.unetlabFamilyLookup;
        }}""")

    def _mark_editor(self) -> None:
        """Tag the editor of the loaded graph's LoRA node (tabs of earlier workflows keep theirs in the DOM)."""
        self.page.evaluate(f"""() => {{
          document.querySelectorAll('[data-role="block-editor"]').forEach((e) => e.removeAttribute("data-current"));
          {self._node_js("UNetLabApplyLoRABlockWeights")}.unetlabEditor.element.setAttribute("data-current", "1");
        }}""")

    def block_editor(self) -> dict[str, Any]:
        self._mark_editor()
        return self.page.evaluate("""() => {
          const root = document.querySelector('[data-role="block-editor"][data-current="1"]');
          const sliders = [...root.querySelectorAll('input[type="range"]')];
          return {family: root.querySelector('[data-role="family"]').value,
                  blocks: sliders.map((s) => s.dataset.block),
                  values: Object.fromEntries(sliders.map((s) => [s.dataset.block, Number(s.value)]))};
        }""")

    def drag_slider(self, block: str, fraction: float) -> None:
        """Press on the slider's thumb and drag it to ``fraction`` of its width, with the mouse."""
        self._mark_editor()
        slider = self.page.locator(f'[data-current="1"] input[data-block="{block}"]')
        slider.scroll_into_view_if_needed()
        box = slider.bounding_box()
        value = float(slider.input_value())
        start = box["x"] + box["width"] * (value + 1) / 3  # range -1..2
        y = box["y"] + box["height"] / 2
        hit = self.page.evaluate(f"() => {{ const e = document.elementFromPoint({start}, {y}); "
                                 f"return e ? e.tagName + ' ' + (e.dataset.block || e.className) : ''; }}")
        if hit != f"INPUT {block}":
            raise AssertionError(f"the {block} slider is covered by {hit!r} at ({start:.0f}, {y:.0f})")
        self.page.mouse.move(start, y)
        self.page.mouse.down()
        self.page.mouse.move(box["x"] + box["width"] * fraction - (2 if fraction == 0 else 0), y, steps=8)
        self.page.mouse.up()

    def choose_editor_preset(self, name: str) -> None:
        self._mark_editor()
        self.page.locator('[data-current="1"] [data-role="preset-menu"]').select_option(name)

    def type_spec(self, text: str) -> None:
        """Replace the block_spec text as a user types it."""
        handle = self.page.evaluate_handle(f"""() => {{
          const w = {self._node_js("UNetLabApplyLoRABlockWeights")}.widgets.find((x) => x.name === "block_spec");
          return w.inputEl ?? w.element;
        }}""")
        handle.as_element().fill(text)

    # -- a run ----------------------------------------------------------------------------------------------
    def run_and_read_panels(self, node_type: str) -> dict[str, Any]:
        self.state.run_done.clear()
        self.page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")
        if not self.state.run_done.wait(timeout=120):
            raise TimeoutError("the harness run did not finish")
        self.page.wait_for_function("""() => {
          const img = document.querySelector('[data-role="overlay-preview"] img');
          return img && img.complete && img.naturalWidth > 0;
        }""", timeout=30_000)
        history = list(self.state.history.values())[-1]
        panels = self.page.evaluate("""() => {
          const img = document.querySelector('[data-role="overlay-preview"] img');
          const text = document.querySelector('[data-role="unet-info"]');
          return {overlay_width: img.naturalWidth, text: text ? text.innerText : "",
                  text_scroll_width: text ? text.scrollWidth : 0, text_client_width: text ? text.clientWidth : 0};
        }""")
        return {"status": history["status"]["status_str"], **panels, "messages": history["status"]["messages"]}
