// UNet Lab: reading the `ui` payloads our nodes send after a run (pure logic: no DOM, no ComfyUI).
//
// ComfyUI hands a node's `ui` dict to the extension's onExecuted(message). Our nodes use:
//   {"unet_info": [{family, dtype, turbo, prediction, ...}, ...]}  Load UNet / Inspect UNet
//   {"text": ["..."]}                                            Inspect UNet (report text)
//   {"unet_lab_overlay": [{filename, subfolder, type}], "unet_lab_mask_info": ["..."]}  Segment Image
//   {"unet_lab_family": ["sdxl"]}                                LoRA nodes (the model they patched)
// Unknown keys are ignored; every value is shown as text, never as HTML.

const MAX_LINES = 14;
const MAX_LINE_CHARS = 160;

const LABELS = {
  family: "family",
  dtype: "dtype",
  turbo: "Turbo",
  prediction: "prediction",
  prediction_type: "prediction",
  config: "config",
  params: "parameters",
  parameters: "parameters",
  keys: "keys",
  layout: "key layout",
  file: "file",
  name: "file",
};
const FIRST = ["family", "dtype", "turbo", "prediction", "prediction_type"];

function clip(line) {
  const s = String(line);
  return s.length > MAX_LINE_CHARS ? `${s.slice(0, MAX_LINE_CHARS - 1)}…` : s;
}

function asText(value) {
  if (value === null || value === undefined) return "–";
  if (typeof value === "boolean") return value ? "yes" : "no";
  if (Array.isArray(value)) return value.map(asText).join(", ");
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

function listOf(value) {
  if (value === undefined || value === null) return [];
  return Array.isArray(value) ? value : [value];
}

/** Lines describing one sniffed-UNet record (family, dtype, Turbo first, then the rest). */
export function infoRecordLines(record) {
  if (record === null || typeof record !== "object" || Array.isArray(record)) {
    return String(record ?? "").split(/\r?\n/).filter((l) => l.trim()).map(clip);
  }
  const keys = [...FIRST.filter((k) => k in record), ...Object.keys(record).filter((k) => !FIRST.includes(k))];
  const lines = [];
  for (const key of keys) {
    if (key === "prediction_type" && "prediction" in record) continue;
    lines.push(clip(`${LABELS[key] ?? key}: ${asText(record[key])}`));
  }
  return lines;
}

/** The lines to show on a Load UNet / Inspect UNet node for an onExecuted message. */
export function unetInfoLines(message) {
  if (!message || typeof message !== "object") return [];
  const lines = [];
  for (const record of listOf(message.unet_info)) {
    let value = record;
    if (typeof record === "string" && record.trim().startsWith("{")) {
      try { value = JSON.parse(record); } catch { value = record; }
    }
    if (lines.length) lines.push("");
    lines.push(...infoRecordLines(value));
  }
  if (!lines.length) {
    for (const text of listOf(message.text)) lines.push(...infoRecordLines(String(text)));
  }
  if (lines.length > MAX_LINES) {
    const hidden = lines.length - (MAX_LINES - 1);
    return [...lines.slice(0, MAX_LINES - 1), `… ${hidden} more lines (see the report output)`];
  }
  return lines;
}

/** Image references ({filename, subfolder, type}) of the overlay previews in a message. */
export function overlayImages(message) {
  if (!message || typeof message !== "object") return [];
  return listOf(message.unet_lab_overlay).filter(
    (img) => img && typeof img === "object" && typeof img.filename === "string" && img.filename);
}

/** The query string of ComfyUI's /view route for an image reference (every part URL-encoded). */
export function viewQuery(image) {
  const params = new URLSearchParams();
  params.set("filename", image.filename);
  params.set("type", image.type || "temp");
  params.set("subfolder", image.subfolder || "");
  return params.toString();
}

/** Caption lines for the overlay preview (mask coverage etc. as the node reports it). */
export function overlayCaption(message) {
  if (!message || typeof message !== "object") return [];
  return listOf(message.unet_lab_mask_info).map((t) => clip(asText(t)));
}

/** The editor family ("sd1" or "sdxl") a run message names, or null (sd2 and inpaint map to their layout). */
export function familyFromMessage(message) {
  if (!message || typeof message !== "object") return null;
  const raw = listOf(message.unet_lab_family)[0] ?? listOf(message.unet_info).find((r) => r && r.family)?.family;
  if (typeof raw !== "string") return null;
  const key = raw.toLowerCase().replace(/[-_.\s]/g, "").replace(/inpaint$/, "");
  if (key === "sdxl") return "sdxl";
  if (["sd1", "sd15", "sd2", "sd21"].includes(key)) return "sd1";
  return null;
}
