// The browser scenario for tests/test_web_browser.py: load the pack's web files the way ComfyUI
// does (every .js under WEB_DIRECTORY as a module), register node types from the pack's real
// node definitions, drive the block-weight editor, send run messages, and write what happened
// as JSON into <pre id="results"> for the test to read from the dumped DOM.
import { makeNodeType } from "./litegraph_stub.js";

const results = { steps: [], errors: [] };
const extensions = [];
window.addEventListener("error", (e) => results.errors.push(String(e.message)));
window.comfyAPI = {
  app: { app: { extensions, registerExtension(ext) { extensions.push(ext); } } },
  api: { api: { apiURL: (route) => `/api${route}` } },
};

function finish() {
  document.getElementById("results").textContent = JSON.stringify(results);
  document.title = "done";
}

function fire(el, type) {
  el.dispatchEvent(new Event(type, { bubbles: true }));
}

function widget(node, name) {
  return node.widgets.find((w) => w.name === name);
}

function sliderValues(node) {
  const out = {};
  for (const s of node.unetlabEditor.element.querySelectorAll("input[type=range]")) {
    out[s.getAttribute("data-block")] = Number(s.value);
  }
  return out;
}

function moveSlider(node, block, value) {
  const s = node.unetlabEditor.element.querySelector(`input[data-block="${block}"]`);
  s.value = String(value);
  fire(s, "input");
}

async function main() {
  const files = await (await fetch("/harness/extensions.json")).json();
  for (const file of files) await import(file);
  results.modules = files;
  results.extensionNames = extensions.map((e) => e.name);
  const defs = await (await fetch("/harness/node_defs.json")).json();
  const types = {};
  for (const def of Object.values(defs)) {
    const NodeType = makeNodeType(def);
    for (const ext of extensions) await ext.beforeRegisterNodeDef?.(NodeType, def, window.comfyAPI.app.app);
    types[def.name] = NodeType;
  }
  const create = (name) => {
    const node = new types[name]();
    node.onNodeCreated?.();
    for (const ext of extensions) ext.nodeCreated?.(node, window.comfyAPI.app.app);
    return node;
  };
  const canvas = document.getElementById("canvas");

  // 1. Apply LoRA (block weights): editor present, sliders per SD1 block.
  const lora = create("UNetLabApplyLoRABlockWeights");
  const spec = widget(lora, "block_spec");
  results.loraWidgets = lora.widgets.map((w) => w.name);
  results.sd1Blocks = Object.keys(sliderValues(lora));
  results.initialStatus = lora.unetlabEditor.status();

  // 2. Moving sliders writes the spec.
  moveSlider(lora, "IN04", 0.5);
  moveSlider(lora, "OUT03", 0.2);
  moveSlider(lora, "OUT04", 0.2);
  moveSlider(lora, "M00", 0);
  results.afterSliders = spec.value;
  results.textareaAfterSliders = spec.inputEl.value;

  // 3. Typing in block_spec moves the sliders.
  spec.inputEl.value = "default=0, BASE=1, OUT05-07=0.75, IN=0.25";
  fire(spec.inputEl, "input");
  results.readBack = sliderValues(lora);

  // 4. A bad spec shows the parser's message and leaves the sliders alone.
  spec.inputEl.value = "IN12=0";
  fire(spec.inputEl, "input");
  results.badStatus = lora.unetlabEditor.status();
  results.badError = lora.unetlabEditor.element.querySelector("[data-role=status]").getAttribute("data-error");
  results.slidersAfterBad = sliderValues(lora);

  // 5. Preset combo with an empty spec: the sliders show the preset.
  spec.inputEl.value = "";
  fire(spec.inputEl, "input");
  const preset = widget(lora, "preset");
  preset.value = "SD-INS";
  preset.callback?.(preset.value);
  results.presetCombo = sliderValues(lora);
  preset.value = preset.options.values[0];
  preset.callback?.(preset.value);

  // 6. Family switch and the editor's own presets menu, vector form.
  const family = lora.unetlabEditor.element.querySelector("[data-role=family]");
  family.value = "sdxl";
  fire(family, "change");
  results.sdxlBlocks = Object.keys(sliderValues(lora));
  results.familyProperty = lora.properties.unetlab_family;
  results.presetMenu = [...lora.unetlabEditor.element.querySelectorAll("[data-role=preset-menu] option")].map((o) => o.value);
  const form = lora.unetlabEditor.element.querySelector("[data-role=form]");
  form.value = "vector";
  fire(form, "change");
  const menu = lora.unetlabEditor.element.querySelector("[data-role=preset-menu]");
  menu.value = "SDXL-MIDALL";
  fire(menu, "change");
  results.presetMenuSpec = spec.value;
  moveSlider(lora, "OUT08", 0);
  results.vectorAfterSlider = spec.value;
  results.serialized = lora.serialize();

  // 7. Back to SD1 and a state worth a screenshot.
  family.value = "sd1";
  fire(family, "change");
  form.value = "named";
  fire(form, "change");
  spec.inputEl.value = "";
  fire(spec.inputEl, "input");
  for (const [block, v] of [["IN01", 0], ["IN02", 0.25], ["IN04", 0.5], ["IN05", 0.75], ["OUT03", 1.5], ["M00", -0.5]]) {
    moveSlider(lora, block, v);
  }
  results.finalSpec = spec.value;
  canvas.append(lora.render());

  // 7b. A workflow load: LiteGraph restores widget values and properties, then calls onConfigure.
  const loaded = create("UNetLabApplyLoRABlockWeights");
  loaded.properties.unetlab_family = "sdxl";
  widget(loaded, "block_spec").value = "default=0.5, OUT08=0";
  loaded.onConfigure?.({ properties: loaded.properties });
  results.configured = { family: loaded.unetlabEditor.family(), sliders: sliderValues(loaded) };

  // 7c. After a run the LoRA node names the model's family: the editor follows.
  loaded.onExecuted?.({ unet_lab_family: ["sd2"] });
  results.familyAfterRun = loaded.unetlabEditor.family();

  // 8. Bake LoRA gets the same editor.
  const bake = create("UNetLabBakeLoRA");
  results.bakeHasEditor = Boolean(bake.unetlabEditor);

  // 9. Inspect UNet: sniffed info after a run; file names stay text.
  const inspect = create("UNetLabInspectUNet");
  inspect.onExecuted?.({
    unet_info: [{ family: "sdxl", dtype: "float16", turbo: true, prediction: "epsilon",
      file: "<img src=x onerror=\"document.title='pwned'\">evil.safetensors" }],
    text: ["ignored when unet_info is present"],
  });
  const info = inspect.widgets.find((w) => w.name === "unet_info");
  results.infoText = info ? [...info.element.children].map((c) => c.textContent) : null;
  results.infoHasImg = info ? info.element.querySelectorAll("img").length : -1;
  canvas.append(inspect.render());

  // 9b. Load UNet sending its info as text (the describe() report), and a node with no message.
  const load = create("UNetLabLoadUNet");
  load.onExecuted?.({ text: ["tiny_sdxl.safetensors (safetensors, 5.14 GB, 1680 tensors)\n" +
    "kind: UNet only; family: SDXL\nlayout: ldm\nfew-step model: SDXL-Turbo (name)"] });
  const loadInfo = load.widgets.find((w) => w.name === "unet_info");
  results.loadText = loadInfo ? [...loadInfo.element.children].map((c) => c.textContent) : null;
  const quiet = create("UNetLabLoadUNet");
  quiet.onExecuted?.({ images: [] });
  results.quietWidgets = quiet.widgets.map((w) => w.name);
  canvas.append(load.render());

  // 10. Segment Image: overlay preview from the run message.
  const seg = create("UNetLabSegmentImage");
  seg.onExecuted?.({ unet_lab_overlay: [{ filename: "overlay 1&x.png", subfolder: "", type: "temp" }],
    unet_lab_mask_info: ["foreground 25.0%"], text: ["1 image(s) 64 x 48 px, 1 tile pass(es)"] });
  const segInfo = seg.widgets.find((w) => w.name === "unet_info");
  results.segText = segInfo ? segInfo.element.textContent : null;
  const preview = seg.unetlabOverlay;
  if (preview) {
    const img = preview.image;
    if (!img.complete) await new Promise((r) => { img.onload = r; img.onerror = r; });
    results.overlay = { src: img.getAttribute("src"), width: img.naturalWidth, height: img.naturalHeight,
      caption: preview.element.textContent };
  }
  canvas.append(seg.render());
  results.title = document.title;
}

main().catch((e) => results.errors.push(String(e && e.stack || e))).finally(finish);
