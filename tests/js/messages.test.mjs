// node --test tests/js/ : reading run messages (ui payloads) for the info and overlay panels.
import { test } from "node:test";
import assert from "node:assert/strict";

import { familyFromMessage, overlayCaption, overlayImages, unetInfoLines, viewQuery } from "../../web/js/messages.js";

test("unet_info records: family, dtype, Turbo first; booleans as yes/no", () => {
  const lines = unetInfoLines({ unet_info: [{ keys: 1680, dtype: "bfloat16", family: "sdxl", turbo: false }] });
  assert.deepEqual(lines, ["family: sdxl", "dtype: bfloat16", "Turbo: no", "keys: 1680"]);
});

test("unet_info given as JSON strings and several records are separated by a blank line", () => {
  const lines = unetInfoLines({ unet_info: ['{"family": "sd1", "dtype": "float16"}', { family: "sd2", turbo: true }] });
  assert.deepEqual(lines, ["family: sd1", "dtype: float16", "", "family: sd2", "Turbo: yes"]);
});

test("text payloads are split into lines and long reports are cut with a note", () => {
  assert.deepEqual(unetInfoLines({ text: ["family: sd1\ndtype: fp16\n\n"] }), ["family: sd1", "dtype: fp16"]);
  const many = Array.from({ length: 30 }, (_, i) => `line ${i}`).join("\n");
  const lines = unetInfoLines({ text: [many] });
  assert.equal(lines.length, 14);
  assert.equal(lines[13], "… 17 more lines (see the report output)");
  assert.deepEqual(unetInfoLines(undefined), []);
  assert.deepEqual(unetInfoLines({ images: [] }), []);
});

test("overlay references: only well-formed entries; /view query is URL-encoded", () => {
  const msg = { unet_lab_overlay: [{ filename: "a b&c.png", subfolder: "x/y", type: "temp" }, { nope: 1 }, null],
    unet_lab_mask_info: ["coverage 12%", 3] };
  const images = overlayImages(msg);
  assert.equal(images.length, 1);
  const q = new URLSearchParams(viewQuery(images[0]));
  assert.equal(q.get("filename"), "a b&c.png");
  assert.equal(q.get("subfolder"), "x/y");
  assert.equal(q.get("type"), "temp");
  assert.ok(!viewQuery(images[0]).includes("&c.png"), "the & in the file name must be encoded");
  assert.equal(new URLSearchParams(viewQuery({ filename: "o.png" })).get("type"), "temp");
  assert.deepEqual(overlayCaption(msg), ["coverage 12%", "3"]);
  assert.deepEqual(overlayImages({ images: [{ filename: "x.png" }] }), [], "native previews are left to ComfyUI");
});

test("familyFromMessage maps model families onto the two block layouts", () => {
  assert.equal(familyFromMessage({ unet_lab_family: ["sdxl"] }), "sdxl");
  assert.equal(familyFromMessage({ unet_lab_family: "sd2" }), "sd1");
  assert.equal(familyFromMessage({ unet_lab_family: ["sd1_inpaint"] }), "sd1");
  assert.equal(familyFromMessage({ unet_info: [{ dtype: "fp16" }, { family: "SDXL-inpaint" }] }), "sdxl");
  assert.equal(familyFromMessage({ unet_lab_family: ["flux"] }), null);
  assert.equal(familyFromMessage({}), null);
});
