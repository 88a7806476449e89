// UNet Lab: the block-weight editor's DOM (one slider per block; family, presets, output form).
//
// Knows nothing of ComfyUI: it reads and writes the spec through the callbacks it is given, so
// the extension entry (unet_lab.js) wires it to the node's block_spec / preset widgets. All text
// goes in through textContent, never innerHTML.

import {
  FAMILIES, NO_PRESET, formatNamed, formatNumber, formatVector, guessFamily, layoutFor, matchPreset,
  presetWeights, presetsFor, validateBlockSpec,
} from "./block_spec.js";

export const SLIDER_MIN = -1;
export const SLIDER_MAX = 2;
export const SLIDER_STEP = 0.05;
const ROW_HEIGHT = 17;
const HEADER_HEIGHT = 52;

function el(doc, tag, props = {}, style = {}) {
  const node = doc.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "text") node.textContent = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  Object.assign(node.style, style);
  return node;
}

function option(doc, value, label = value) {
  return el(doc, "option", { value, text: label });
}

/**
 * Build an editor. io: {getSpec(), setSpec(text), getPreset()?, family?, onFamily(family)?}.
 * Returns {element, refresh(), setFamily(f), family(), weights(), height(), status()}.
 */
export function createBlockEditor(doc, io) {
  const root = el(doc, "div", { className: "unetlab-block-editor", "data-role": "block-editor" }, {
    font: "11px sans-serif", color: "var(--input-text, #ddd)", background: "var(--comfy-input-bg, #222)",
    padding: "4px", boxSizing: "border-box", borderRadius: "4px", overflow: "hidden", width: "100%",
  });
  const bar = el(doc, "div", {}, { display: "flex", gap: "4px", alignItems: "center", marginBottom: "2px" });
  const familySel = el(doc, "select", { title: "Model family: sets which blocks exist", "data-role": "family" });
  for (const f of FAMILIES) familySel.append(option(doc, f, f === "sd1" ? "SD1 / SD2" : "SDXL"));
  const presetSel = el(doc, "select", { title: "Load a preset into the sliders", "data-role": "preset-menu" });
  const formSel = el(doc, "select", { title: "How the sliders write block_spec", "data-role": "form" });
  formSel.append(option(doc, "named", "named"), option(doc, "vector", "vector"));
  const reset = el(doc, "button", { text: "all 1", title: "Every block at 1", "data-role": "reset" });
  bar.append(familySel, presetSel, formSel, reset);
  const status = el(doc, "div", { "data-role": "status" }, {
    minHeight: "14px", whiteSpace: "nowrap", overflow: "hidden", textOverflow: "ellipsis", marginBottom: "2px",
  });
  const rows = el(doc, "div", { "data-role": "rows" });
  root.append(bar, status, rows);

  let family = io.family && FAMILIES.includes(io.family) ? io.family : null;
  let weights = null;
  const sliders = new Map();

  function setStatus(text, isError) {
    status.textContent = text;
    status.title = text;
    status.setAttribute("data-error", isError ? "1" : "0");
    status.style.color = isError ? "#f66" : "var(--descrip-text, #999)";
  }

  function buildRows() {
    rows.replaceChildren();
    sliders.clear();
    const layout = layoutFor(family);
    const attention = new Set(layout.short);
    for (const block of layout.full) {
      const row = el(doc, "div", {}, {
        display: "grid", gridTemplateColumns: "44px 1fr 40px", alignItems: "center", height: `${ROW_HEIGHT}px`,
      });
      const name = el(doc, "span", { text: block }, {
        fontWeight: attention.has(block) ? "bold" : "normal", opacity: attention.has(block) ? "1" : "0.7",
      });
      name.title = attention.has(block)
        ? `${block}: in the ${layout.short.length}-value vector`
        : `${block}: no attention; a ${layout.short.length}-value vector leaves it at 1`;
      const slider = el(doc, "input", {
        type: "range", min: String(SLIDER_MIN), max: String(SLIDER_MAX), step: String(SLIDER_STEP),
        "data-block": block, title: block,
      }, { width: "100%", margin: "0 4px", height: "12px" });
      const value = el(doc, "span", { "data-value-of": block }, { textAlign: "right" });
      slider.addEventListener("input", () => onSlider(block, Number(slider.value)));
      row.append(name, slider, value);
      rows.append(row);
      sliders.set(block, { slider, value });
    }
    presetSel.replaceChildren(option(doc, "", "preset…"));
    for (const name of presetsFor(family)) presetSel.append(option(doc, name));
    familySel.value = family;
  }

  function show(w) {
    for (const [block, { slider, value }] of sliders) {
      const v = w[block];
      slider.value = String(Math.min(SLIDER_MAX, Math.max(SLIDER_MIN, v)));
      value.textContent = formatNumber(v);
      value.style.color = v < SLIDER_MIN || v > SLIDER_MAX ? "#fa0" : "";
    }
  }

  function describe(w) {
    const preset = matchPreset(w, family);
    return preset ? `= preset ${preset}` : `${formatVector(w, family).split(",").length}-value vector`;
  }

  function write() {
    const text = formSel.value === "vector" ? formatVector(weights, family) : formatNamed(weights, family);
    io.setSpec(text);
    setStatus(`ok (${describe(weights)})`, false);
  }

  function onSlider(block, v) {
    if (!weights) weights = Object.fromEntries(layoutFor(family).full.map((b) => [b, 1]));
    weights[block] = v;
    sliders.get(block).value.textContent = formatNumber(v);
    write();
  }

  function refresh() {
    const spec = io.getSpec() ?? "";
    const preset = io.getPreset ? io.getPreset() : null;
    const result = validateBlockSpec(spec, family, preset && preset !== NO_PRESET ? preset : null);
    if (result.ok) {
      weights = result.weights;
      show(weights);
      setStatus(String(spec).trim() ? `ok (${describe(weights)})` : `empty: ${preset && preset !== NO_PRESET ? `preset ${preset}` : "1 everywhere"}`, false);
    } else {
      setStatus(result.error, true);
    }
    return result;
  }

  function setFamily(f) {
    if (!FAMILIES.includes(f)) return;
    family = f;
    buildRows();
    io.onFamily?.(f);
    refresh();
  }

  familySel.addEventListener("change", () => setFamily(familySel.value));
  presetSel.addEventListener("change", () => {
    const name = presetSel.value;
    presetSel.value = "";
    if (!name) return;
    weights = presetWeights(name, family);
    show(weights);
    write();
  });
  formSel.addEventListener("change", () => { if (weights && refresh().ok) write(); });
  reset.addEventListener("click", () => {
    weights = Object.fromEntries(layoutFor(family).full.map((b) => [b, 1]));
    show(weights);
    write();
  });

  if (!family) {
    family = guessFamily(io.getSpec() ?? "", io.getPreset ? io.getPreset() : null) ?? "sd1";
  }
  buildRows();
  refresh();

  return {
    element: root,
    refresh,
    setFamily,
    family: () => family,
    weights: () => (weights ? { ...weights } : null),
    height: () => HEADER_HEIGHT + ROW_HEIGHT * sliders.size + 8,
    status: () => status.textContent,
  };
}
