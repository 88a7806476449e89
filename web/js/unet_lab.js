// UNet Lab: ComfyUI frontend extension (entry). ComfyUI serves WEB_DIRECTORY under
// /extensions/<pack folder>/, so this file is /extensions/<pack>/js/unet_lab.js and the app
// shim ComfyUI_frontend provides for extensions is three levels up, at /scripts/app.js.
//
// - Apply LoRA (block weights) / Bake LoRA: a slider per block, family selector, presets;
//   writes the block_spec widget and reads it back when the text or the preset changes.
// - Load UNet / Inspect UNet: the sniffed info (family, dtype, Turbo…) after a run; every other
//   node of the pack: the report text it sends as {"ui": {"text": [...]}}.
// - Segment Image: a preview of the overlay after a run.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";
import { createBlockEditor } from "./block_editor.js";
import { createImagePanel, createTextPanel } from "./info_panel.js";
import { familyFromMessage, overlayCaption, overlayImages, unetInfoLines, viewQuery } from "./messages.js";

export const LORA_NODES = new Set(["UNetLabApplyLoRABlockWeights", "UNetLabBakeLoRA"]);
export const SEGMENT_NODES = new Set(["UNetLabSegmentImage"]);
const PACK_PREFIX = "UNetLab";
const FAMILY_PROPERTY = "unetlab_family";
// The pack's route (nodes/lora_family_route.py): the family a LoRA file was made for, from its header.
const LORA_FAMILY_ROUTE = "/unet_lab/lora_family";

function chain(proto, name, after) {
  const original = proto[name];
  proto[name] = function (...args) {
    const result = original?.apply(this, args);
    after.apply(this, args);
    return result;
  };
}

function widget(node, name) {
  return node.widgets?.find((w) => w.name === name);
}

/** Add a DOM widget that is never serialized (widgets_values keep the node's own inputs only). */
function addPanel(node, name, element, height) {
  if (typeof node.addDOMWidget !== "function") return null;
  const w = node.addDOMWidget(name, "unetlab_panel", element, {
    serialize: false, hideOnZoom: false, getMinHeight: height, getHeight: height,
  });
  try {
    w.serialize = false; // LiteGraph leaves widgets with serialize === false out of widgets_values
    if (w.options && w.options.serialize !== false) w.options.serialize = false;
  } catch (err) {
    console.warn("UNet Lab: cannot mark the panel widget unserialized", err);
  }
  // Frontends with flexible DOM-widget layout size from getMinHeight; older ones ask computeSize.
  if (typeof w.computeLayoutSize !== "function") w.computeSize = (width) => [width, height()];
  return w;
}

function fitHeight(node) {
  const size = node.computeSize?.();
  if (size && node.size && size[1] > node.size[1]) node.setSize?.([Math.max(node.size[0], size[0]), size[1]]);
  node.setDirtyCanvas?.(true, true);
}

/** Switch the editor to ``family``; the node grows when the new layout has more sliders. */
function showFamily(node, family) {
  const editor = node.unetlabEditor;
  if (!editor || !family || family === editor.family()) return;
  editor.setFamily(family);
  fitHeight(node);
}

/** Ask the server which family the node's LoRA file is for; switch when the header tells. */
function lookUpLoraFamily(node) {
  const name = widget(node, "lora_name")?.value;
  if (!name || typeof api?.fetchApi !== "function") return Promise.resolve(null);
  const lookup = api.fetchApi(`${LORA_FAMILY_ROUTE}?name=${encodeURIComponent(name)}`)
    .then((response) => (response.ok ? response.json() : null))
    .then((answer) => {
      if (answer?.family && widget(node, "lora_name")?.value === name) showFamily(node, answer.family);
      return answer?.family ?? null;
    })
    .catch((err) => {
      console.warn("UNet Lab: LoRA family lookup failed", err);
      return null;
    });
  node.unetlabFamilyLookup = lookup;
  return lookup;
}

function attachBlockEditor(node) {
  const spec = widget(node, "block_spec");
  if (!spec || node.unetlabEditor) return;
  const preset = widget(node, "preset");
  let writing = false;
  const originalSpecCallback = spec.callback;
  node.properties ??= {};
  const editor = createBlockEditor(document, {
    getSpec: () => spec.value ?? "",
    getPreset: () => preset?.value ?? null,
    family: node.properties[FAMILY_PROPERTY],
    setSpec: (text) => {
      writing = true;
      try {
        spec.value = text;
        const input = spec.inputEl ?? spec.element;
        if (input && "value" in input && input.value !== text) input.value = text;
        originalSpecCallback?.call(spec, text);
      } finally {
        writing = false;
      }
      node.setDirtyCanvas?.(true, true);
    },
    onFamily: (family) => { node.properties[FAMILY_PROPERTY] = family; },
  });
  node.properties[FAMILY_PROPERTY] = editor.family();
  spec.callback = function (...args) {
    const result = originalSpecCallback?.apply(this, args);
    if (!writing) editor.refresh();
    return result;
  };
  const input = spec.inputEl ?? spec.element;
  input?.addEventListener?.("input", () => { if (!writing) editor.refresh(); });
  const lora = widget(node, "lora_name");
  if (lora) {
    const originalLoraCallback = lora.callback;
    lora.callback = function (...args) {
      const result = originalLoraCallback?.apply(this, args);
      lookUpLoraFamily(node);
      return result;
    };
  }
  if (preset) {
    const originalPresetCallback = preset.callback;
    preset.callback = function (...args) {
      const result = originalPresetCallback?.apply(this, args);
      editor.refresh();
      return result;
    };
  }
  node.unetlabEditor = editor;
  addPanel(node, "block_weights", editor.element, () => editor.height());
  fitHeight(node);
}

function showInfo(node, message) {
  const lines = unetInfoLines(message);
  if (!lines.length) return;
  if (!node.unetlabInfo) {
    const panel = createTextPanel(document, "unet-info");
    node.unetlabInfo = panel;
    // 11px monospace: about 6.6 px a character; wrapped lines make the panel taller, never wider.
    addPanel(node, "unet_info", panel.element,
      () => 10 + 14 * Math.max(1, panel.wrappedRows(Math.floor(((node.size?.[0] ?? 300) - 30) / 6.6))));
  }
  node.unetlabInfo.show(lines);
  fitHeight(node);
}

function showOverlay(node, message) {
  const images = overlayImages(message);
  if (!images.length) return;
  if (!node.unetlabOverlay) {
    const panel = createImagePanel(document, "overlay-preview");
    node.unetlabOverlay = panel;
    addPanel(node, "overlay_preview", panel.element, () => 280);
  }
  const url = api.apiURL(`/view?${viewQuery(images[0])}&rand=${Math.random()}`);
  node.unetlabOverlay.show(url, overlayCaption(message));
  fitHeight(node);
}

app.registerExtension({
  name: "UNetLab.Web",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    const name = nodeData?.name;
    if (typeof name !== "string" || !name.startsWith(PACK_PREFIX)) return;
    if (LORA_NODES.has(name)) {
      chain(nodeType.prototype, "onNodeCreated", function () {
        attachBlockEditor(this);
        // A fresh node: the family of its LoRA file. On load, onConfigure sets the saved values after
        // this, and a late answer for the default file is dropped (the name no longer matches).
        lookUpLoraFamily(this);
      });
      chain(nodeType.prototype, "onExecuted", function (message) {
        // After a run the node may say which family the patched model was: follow it.
        showFamily(this, familyFromMessage(message));
      });
      chain(nodeType.prototype, "onConfigure", function () {
        const family = this.properties?.[FAMILY_PROPERTY];
        if (family && this.unetlabEditor && family !== this.unetlabEditor.family()) showFamily(this, family);
        else this.unetlabEditor?.refresh();
        if (!family) lookUpLoraFamily(this);  // a workflow saved without a family: ask the file's header
      });
    }
    if (SEGMENT_NODES.has(name)) {
      chain(nodeType.prototype, "onExecuted", function (message) { showOverlay(this, message); });
    }
    // Every node of the pack: its report ({"text": [...]}) or sniffed info ({"unet_info": [...]}) on the node.
    chain(nodeType.prototype, "onExecuted", function (message) { showInfo(this, message); });
  },
});
