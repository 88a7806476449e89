// UNet Lab: LoRA block-weight specs in the browser (pure logic: no DOM, no ComfyUI).
//
// Mirrors the Python parser in unet_core/lora/blocks.py (parse_block_spec), error messages
// included, so the editor can say what the node would say before the graph runs.
// Block names follow sd-webui-lora-block-weight: BASE, IN00…, M00, OUT00….
//
// A spec is either a positional vector (SD1: 17 or 26 values, SDXL: 12 or 20, BASE first)
// or a named form such as "default=1, IN04=0.5, OUT03-05=0.2, M00=0" (groups IN, OUT, MID).

import LBW from "./lbw_presets.js";

/** The value of the node's preset combo that means "no preset". */
export const NO_PRESET = LBW.no_preset;
/** Preset name -> comma-separated vector (SD-* 17 values, SDXL-* 12 values). */
export const PRESETS = Object.freeze({ ...LBW.presets });

export class BlockSpecError extends Error {
  constructor(message) {
    super(message);
    this.name = "BlockSpecError";
  }
}

function range(n) {
  return Array.from({ length: n }, (_, i) => i);
}

function pad2(i) {
  return String(i).padStart(2, "0");
}

function makeLayout(family, nInput, nOutput, attentionInputs, attentionOutputs) {
  const inputs = range(nInput).map((i) => `IN${pad2(i)}`);
  const outputs = range(nOutput).map((i) => `OUT${pad2(i)}`);
  return Object.freeze({
    family,
    inputs,
    outputs,
    full: ["BASE", ...inputs, "M00", ...outputs],
    short: ["BASE", ...attentionInputs.map((i) => `IN${pad2(i)}`), "M00",
      ...attentionOutputs.map((i) => `OUT${pad2(i)}`)],
  });
}

// SD1/SD2: 12 input and 12 output blocks; attention in IN01,02,04,05,07,08 and OUT03–OUT11.
// SDXL: 9 and 9; attention in IN04,05,07,08 and OUT00–OUT05.
const LAYOUTS = {
  sd1: makeLayout("sd1", 12, 12, [1, 2, 4, 5, 7, 8], range(9).map((i) => i + 3)),
  sdxl: makeLayout("sdxl", 9, 9, [4, 5, 7, 8], range(6)),
};
const FAMILY_ALIASES = { sd1: "sd1", sd15: "sd1", sd2: "sd1", sd21: "sd1", sdxl: "sdxl" };

/** Families the editor offers (SD2 shares SD1's block layout). */
export const FAMILIES = Object.freeze(["sd1", "sdxl"]);

/** The block layout of a family ("sd1", "sd2", "sdxl", inpaint variants too). */
export function layoutFor(family) {
  const key = String(family ?? "").toLowerCase().replace(/[-_.\s]/g, "").replace(/inpaint$/, "");
  const canonical = FAMILY_ALIASES[key];
  if (!canonical) {
    throw new BlockSpecError(`unknown model family ${pyRepr(String(family))}; known: ${FAMILIES.join(", ")}`);
  }
  return LAYOUTS[canonical];
}

/** Python's repr() of a str, for messages identical to the Python parser's. */
export function pyRepr(text) {
  const s = String(text);
  const quote = s.includes("'") && !s.includes('"') ? '"' : "'";
  let out = quote;
  for (const ch of s) {
    const code = ch.codePointAt(0);
    if (ch === "\\") out += "\\\\";
    else if (ch === quote) out += "\\" + quote;
    else if (ch === "\n") out += "\\n";
    else if (ch === "\r") out += "\\r";
    else if (ch === "\t") out += "\\t";
    else if (code < 0x20 || code === 0x7f) out += "\\x" + code.toString(16).padStart(2, "0");
    else out += ch;
  }
  return out + quote;
}

const DIGITS = "\\d(?:_?\\d)*";
const FLOAT_RE = new RegExp(`^[+-]?(?:${DIGITS}(?:\\.(?:${DIGITS})?)?|\\.${DIGITS})(?:[eE][+-]?${DIGITS})?$`);
const NONFINITE_RE = /^[+-]?(?:inf|infinity|nan)$/i;

/** A number as Python's float() reads it; BlockSpecError otherwise (same words as the Python parser). */
export function parseNumber(text, where) {
  const t = String(text).trim();
  if (NONFINITE_RE.test(t)) {
    throw new BlockSpecError(`block spec: ${where}: ${pyRepr(text)} is not a finite number`);
  }
  if (!FLOAT_RE.test(t)) {
    throw new BlockSpecError(`block spec: ${where}: ${pyRepr(text)} is not a number`);
  }
  const value = Number(t.replace(/_/g, ""));
  if (!Number.isFinite(value)) {
    throw new BlockSpecError(`block spec: ${where}: ${pyRepr(text)} is not a finite number`);
  }
  return value;
}

function allOnes(layout) {
  return Object.fromEntries(layout.full.map((b) => [b, 1.0]));
}

function fromVector(values, layout, what) {
  if (values.length === layout.full.length) {
    return Object.fromEntries(layout.full.map((b, i) => [b, values[i]]));
  }
  if (values.length === layout.short.length) {
    const weights = allOnes(layout);
    layout.short.forEach((b, i) => { weights[b] = values[i]; });
    return weights;
  }
  const { full, short, inputs, outputs } = layout;
  throw new BlockSpecError(
    `${what}: a vector of ${values.length} values does not fit this model; it takes ` +
    `${short.length} values (${short.join(", ")}) or ${full.length} values ` +
    `(${full[0]}, ${full[1]}–${inputs[inputs.length - 1]}, M00, ${outputs[0]}–${outputs[outputs.length - 1]})`);
}

function expandName(name, layout) {
  const upper = name.trim().toUpperCase();
  let names;
  const m = /^(IN|OUT)(\d+)\s*-\s*(IN|OUT)?(\d+)$/.exec(upper);
  if (m) {
    const [kind, start, kind2, stop] = [m[1], parseInt(m[2], 10), m[3], parseInt(m[4], 10)];
    if (kind2 !== undefined && kind2 !== kind) {
      throw new BlockSpecError(`block spec: range ${pyRepr(name)} must stay within ${kind} blocks`);
    }
    if (stop < start) {
      throw new BlockSpecError(
        `block spec: range ${pyRepr(name)} runs backwards (${kind}${pad2(start)} > ${kind}${pad2(stop)})`);
    }
    names = range(stop - start + 1).map((i) => `${kind}${pad2(start + i)}`);
  } else {
    const m1 = /^(IN|OUT|M)(\d+)$/.exec(upper);
    names = m1 ? [`${m1[1]}${pad2(parseInt(m1[2], 10))}`] : [upper];
  }
  const known = new Set(layout.full);
  for (const block of names) {
    if (!known.has(block)) {
      throw new BlockSpecError(
        `block spec: unknown block ${pyRepr(block)} in ${pyRepr(name)}; this model has ` +
        `BASE, ${layout.inputs[0]}–${layout.inputs[layout.inputs.length - 1]}, M00, ` +
        `${layout.outputs[0]}–${layout.outputs[layout.outputs.length - 1]} (groups: IN, OUT, MID)`);
    }
  }
  return names;
}

// Python's str.splitlines() boundaries.
const LINE_BREAK = /\r\n|[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]/;

/** The preset's weights for a layout (BlockSpecError if unknown or of the wrong length). */
export function presetWeights(preset, layoutOrFamily) {
  const layout = typeof layoutOrFamily === "string" ? layoutFor(layoutOrFamily) : layoutOrFamily;
  if (!Object.prototype.hasOwnProperty.call(PRESETS, preset)) {
    throw new BlockSpecError(
      `unknown block-weight preset ${pyRepr(preset)}; known: ${Object.keys(PRESETS).join(", ")}`);
  }
  return fromVector(PRESETS[preset].split(",").map(Number), layout, `preset ${preset}`);
}

/**
 * Block weights {block: weight} for every block of the family's layout (BASE included).
 * Same rules as the Python parser: the preset gives the start, a vector replaces it, a named
 * form overrides it (default < groups IN/OUT/MID < single blocks and ranges).
 */
export function parseBlockSpec(spec, family, preset = null) {
  const layout = typeof family === "string" ? layoutFor(family) : family;
  let weights = allOnes(layout);
  if (preset && preset !== NO_PRESET) weights = presetWeights(preset, layout);
  const text = String(spec ?? "").split(LINE_BREAK).map((line) => line.split("#")[0]).join("\n").trim();
  if (!text) return weights;
  const items = text.split(/[,;\n]/).map((s) => s.trim()).filter(Boolean);
  if (items.every((item) => !item.includes("=") && !item.includes(":"))) {
    const values = [];
    text.split(/[,;\s]+/).forEach((v, i) => { if (v) values.push(parseNumber(v, `value ${i + 1}`)); });
    return fromVector(values, layout, "block spec");
  }
  let defaultValue = null;
  const groups = new Map();
  const singles = new Map();
  for (const item of items) {
    if (!item.includes("=") && !item.includes(":")) {
      throw new BlockSpecError(`block spec: ${pyRepr(item)} is neither NAME=value nor part of a vector of numbers`);
    }
    const cut = item.search(/[=:]/);
    const name = item.slice(0, cut).trim();
    const value = parseNumber(item.slice(cut + 1).trim(), name || "?");
    const upper = name.toUpperCase();
    if (!name) throw new BlockSpecError(`block spec: ${pyRepr(item)} names no block`);
    if (upper === "DEFAULT") {
      if (defaultValue !== null) throw new BlockSpecError("block spec: 'default' is given twice");
      defaultValue = value;
    } else if (["IN", "OUT", "MID", "M"].includes(upper)) {
      const group = upper === "MID" || upper === "M" ? "MID" : upper;
      if (groups.has(group)) throw new BlockSpecError(`block spec: group ${group} is given twice`);
      groups.set(group, value);
    } else {
      const blocks = upper === "M00" ? ["M00"] : upper === "BASE" ? ["BASE"] : expandName(name, layout);
      for (const block of blocks) {
        if (singles.has(block)) {
          throw new BlockSpecError(`block spec: block ${block} is named twice (in ${pyRepr(item)})`);
        }
        singles.set(block, value);
      }
    }
  }
  if (defaultValue !== null) weights = Object.fromEntries(layout.full.map((b) => [b, defaultValue]));
  for (const [group, value] of groups) {
    const members = group === "MID" ? ["M00"] : group === "IN" ? layout.inputs : layout.outputs;
    for (const b of members) weights[b] = value;
  }
  for (const [block, value] of singles) weights[block] = value;
  return weights;
}

/** {ok, weights, error}: parseBlockSpec without throwing, for live validation in the editor. */
export function validateBlockSpec(spec, family, preset = null) {
  try {
    return { ok: true, weights: parseBlockSpec(spec, family, preset), error: null };
  } catch (err) {
    if (err instanceof BlockSpecError) return { ok: false, weights: null, error: err.message };
    throw err;
  }
}

/** A weight as short text that Python's float() reads back (slider steps lose their float noise). */
export function formatNumber(x) {
  const v = Number(Number(x).toPrecision(6));
  return Object.is(v, -0) ? "0" : String(v);
}

function sameValue(a, b) {
  return formatNumber(a) === formatNumber(b);
}

function requireWeights(weights, layout) {
  for (const b of layout.full) {
    if (typeof weights[b] !== "number" || !Number.isFinite(weights[b])) {
      throw new BlockSpecError(`block weights: ${b} has no finite value`);
    }
  }
}

/**
 * The named form of a full set of weights: "default=D" (the most common value, 1 on ties) then
 * every block that differs, runs of equal neighbours written as ranges (OUT03-05=0.2).
 * Always starts with default=, so it means the same whatever preset the node has selected.
 */
export function formatNamed(weights, family) {
  const layout = typeof family === "string" ? layoutFor(family) : family;
  requireWeights(weights, layout);
  const counts = new Map();
  for (const b of layout.full) {
    const key = formatNumber(weights[b]);
    counts.set(key, (counts.get(key) ?? 0) + 1);
  }
  let best = "1";
  let bestCount = counts.get("1") ?? 0;
  for (const [key, n] of counts) if (n > bestCount) { best = key; bestCount = n; }
  const parts = [`default=${best}`];
  const emit = (kind, names) => {
    let i = 0;
    while (i < names.length) {
      const value = formatNumber(weights[names[i]]);
      if (value === best) { i += 1; continue; }
      let j = i;
      while (j + 1 < names.length && formatNumber(weights[names[j + 1]]) === value) j += 1;
      parts.push(j > i ? `${names[i]}-${names[j].slice(kind.length)}=${value}` : `${names[i]}=${value}`);
      i = j + 1;
    }
  };
  emit("", ["BASE"]);
  emit("IN", layout.inputs);
  emit("", ["M00"]);
  emit("OUT", layout.outputs);
  return parts.join(", ");
}

/**
 * The positional vector of a full set of weights: the short form (17 SD1 / 12 SDXL) when every
 * block outside it is 1 (what the short form implies), else the full form (26 / 20).
 * form: "auto" (default), "short" or "full".
 */
export function formatVector(weights, family, form = "auto") {
  const layout = typeof family === "string" ? layoutFor(family) : family;
  requireWeights(weights, layout);
  const inShort = new Set(layout.short);
  const shortFits = layout.full.every((b) => inShort.has(b) || sameValue(weights[b], 1));
  let names;
  if (form === "short") {
    if (!shortFits) {
      const off = layout.full.filter((b) => !inShort.has(b) && !sameValue(weights[b], 1));
      throw new BlockSpecError(
        `block weights: the ${layout.short.length}-value vector leaves ${off.join(", ")} at 1; use the full form`);
    }
    names = layout.short;
  } else if (form === "full") {
    names = layout.full;
  } else if (form === "auto") {
    names = shortFits ? layout.short : layout.full;
  } else {
    throw new BlockSpecError(`block weights: unknown vector form ${pyRepr(form)} (auto, short, full)`);
  }
  return names.map((b) => formatNumber(weights[b])).join(",");
}

/** Preset names whose vectors fit the family (SD-* for sd1/sd2, SDXL-* for sdxl). */
export function presetsFor(family) {
  const layout = typeof family === "string" ? layoutFor(family) : family;
  const sizes = [layout.short.length, layout.full.length];
  return Object.keys(PRESETS).filter((name) => sizes.includes(PRESETS[name].split(",").length));
}

/** The first preset of the family whose weights equal these, or null. */
export function matchPreset(weights, family) {
  const layout = typeof family === "string" ? layoutFor(family) : family;
  for (const name of presetsFor(layout)) {
    const p = presetWeights(name, layout);
    if (layout.full.every((b) => sameValue(p[b], weights[b]))) return name;
  }
  return null;
}

/** Guess the family from a preset name or a vector's length (null when it tells nothing). */
export function guessFamily(spec, preset = null) {
  if (preset && preset.startsWith("SDXL-")) return "sdxl";
  if (preset && preset.startsWith("SD-")) return "sd1";
  const text = String(spec ?? "").split(LINE_BREAK).map((l) => l.split("#")[0]).join("\n").trim();
  if (!text) return null;
  if (/[=:]/.test(text)) {
    // Blocks only SD1 has: IN09–IN11, OUT09–OUT11.
    return /\b(IN(09|1[01])|OUT(09|1[01]))\b/i.test(text) ? "sd1" : null;
  }
  const n = text.split(/[,;\s]+/).filter(Boolean).length;
  if (n === 17 || n === 26) return "sd1";
  if (n === 12 || n === 20) return "sdxl";
  return null;
}

/** True where the block holds attention (is part of the short vector). */
export function isAttentionBlock(block, family) {
  return layoutFor(family).short.includes(block);
}
