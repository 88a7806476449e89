// node --test tests/js/ : the pure block-spec logic of the web extension.
// Expected values are written out here from the block-weight vector layouts
// (sd-webui-lora-block-weight / Inspire Pack), not taken from the code under test.
import { test } from "node:test";
import assert from "node:assert/strict";

import {
  BlockSpecError, NO_PRESET, PRESETS, formatNamed, formatNumber, formatVector, guessFamily,
  layoutFor, matchPreset, parseBlockSpec, presetWeights, presetsFor, pyRepr, validateBlockSpec,
} from "../../web/js/block_spec.js";

const SD1_17 = ["BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "M00",
  "OUT03", "OUT04", "OUT05", "OUT06", "OUT07", "OUT08", "OUT09", "OUT10", "OUT11"];
const SD1_26 = ["BASE", "IN00", "IN01", "IN02", "IN03", "IN04", "IN05", "IN06", "IN07", "IN08", "IN09",
  "IN10", "IN11", "M00", "OUT00", "OUT01", "OUT02", "OUT03", "OUT04", "OUT05", "OUT06", "OUT07", "OUT08",
  "OUT09", "OUT10", "OUT11"];
const SDXL_12 = ["BASE", "IN04", "IN05", "IN07", "IN08", "M00", "OUT00", "OUT01", "OUT02", "OUT03", "OUT04", "OUT05"];
const SDXL_20 = ["BASE", "IN00", "IN01", "IN02", "IN03", "IN04", "IN05", "IN06", "IN07", "IN08", "M00",
  "OUT00", "OUT01", "OUT02", "OUT03", "OUT04", "OUT05", "OUT06", "OUT07", "OUT08"];

function expectWeights(actual, expected) {
  assert.deepEqual(Object.keys(actual).sort(), Object.keys(expected).sort());
  for (const [k, v] of Object.entries(expected)) assert.equal(actual[k], v, `block ${k}`);
}

function filled(names, value, overrides = {}) {
  return { ...Object.fromEntries(names.map((n) => [n, value])), ...overrides };
}

test("layouts match the published vector orders", () => {
  assert.deepEqual(layoutFor("sd1").short, SD1_17);
  assert.deepEqual(layoutFor("sd1").full, SD1_26);
  assert.deepEqual(layoutFor("sdxl").short, SDXL_12);
  assert.deepEqual(layoutFor("sdxl").full, SDXL_20);
  assert.deepEqual(layoutFor("sd2").full, SD1_26, "SD2 shares SD1's blocks");
  assert.deepEqual(layoutFor("sdxl_inpaint").full, SDXL_20);
  assert.throws(() => layoutFor("flux"), (e) => e instanceof BlockSpecError && /unknown model family 'flux'/.test(e.message));
});

test("a 17-value vector sets the attention blocks and leaves the others at 1", () => {
  const values = SD1_17.map((_, i) => i / 10);
  const w = parseBlockSpec(values.join(","), "sd1");
  const expected = filled(SD1_26, 1);
  SD1_17.forEach((b, i) => { expected[b] = i / 10; });
  expectWeights(w, expected);
  assert.equal(w.IN00, 1);
  assert.equal(w.OUT02, 1);
  assert.equal(w.OUT11, 1.6);
});

test("a full vector sets every block; separators may be commas, semicolons, spaces, newlines", () => {
  const values = SDXL_20.map((_, i) => (i % 3) * 0.25);
  const text = values.slice(0, 10).join(" ") + ";\n" + values.slice(10).join(", ");
  expectWeights(parseBlockSpec(text, "sdxl"), Object.fromEntries(SDXL_20.map((b, i) => [b, values[i]])));
});

test("named form: default < groups < singles and ranges; comments are ignored", () => {
  const w = parseBlockSpec("default=0.5, IN=0, OUT03-05=0.2 # tail comment\nM00=1; in04 : 0.7\n# whole line", "sd1");
  const expected = filled(SD1_26, 0.5, Object.fromEntries(
    SD1_26.filter((b) => b.startsWith("IN")).map((b) => [b, 0])));
  Object.assign(expected, { OUT03: 0.2, OUT04: 0.2, OUT05: 0.2, M00: 1, IN04: 0.7 });
  expectWeights(w, expected);
});

test("named form without default starts from the preset; a vector replaces it", () => {
  const preset = "SDXL-OUTALL"; // 1,0,0,0,0,0,1,1,1,1,1,1
  const w = parseBlockSpec("OUT00=0.3, MID=0.9", "sdxl", preset);
  const expected = filled(SDXL_20, 1, { IN04: 0, IN05: 0, IN07: 0, IN08: 0, M00: 0.9, OUT00: 0.3 });
  expectWeights(w, expected);
  const replaced = parseBlockSpec(SDXL_12.map(() => "0.5").join(","), "sdxl", preset);
  expectWeights(replaced, filled(SDXL_20, 1, Object.fromEntries(SDXL_12.map((b) => [b, 0.5]))));
  const withDefault = parseBlockSpec("default=0", "sdxl", preset);
  expectWeights(withDefault, filled(SDXL_20, 0));
});

test("empty spec gives the preset, or 1 everywhere", () => {
  expectWeights(parseBlockSpec("", "sd1"), filled(SD1_26, 1));
  expectWeights(parseBlockSpec("  # only a comment", "sd1", NO_PRESET), filled(SD1_26, 1));
  // SD-INS: 1,1,1,1,0,... over the 17 blocks -> BASE, IN01, IN02, IN04 = 1; IN05…OUT11 (short) = 0.
  const ins = parseBlockSpec(null, "sd1", "SD-INS");
  const expected = filled(SD1_26, 1);
  SD1_17.slice(4).forEach((b) => { expected[b] = 0; });
  expectWeights(ins, expected);
});

test("presets: both families, names and values as published", () => {
  assert.ok(PRESETS["SD-ALL"] && PRESETS["SDXL-ALL"]);
  for (const name of presetsFor("sd1")) assert.ok(name.startsWith("SD-"), name);
  for (const name of presetsFor("sdxl")) assert.ok(name.startsWith("SDXL-"), name);
  assert.ok(presetsFor("sd1").includes("SD-MIDD"));
  assert.ok(presetsFor("sdxl").includes("SDXL-MIDALL"));
  expectWeights(presetWeights("SDXL-MIDALL", "sdxl"),
    filled(SDXL_20, 1, { IN04: 0, IN05: 0, IN07: 0, IN08: 0, OUT00: 0, OUT01: 0, OUT02: 0, OUT03: 0, OUT04: 0, OUT05: 0 }));
  assert.equal(matchPreset(filled(SD1_26, 1), "sd1"), "SD-ALL");
  assert.equal(matchPreset(parseBlockSpec(
    "default=0, BASE=1, IN00=1, IN03=1, IN06=1, IN09-11=1, OUT00-02=1, OUT07-11=1", "sd1"), "sd1"), "SD-OUTS");
  // the short vector leaves the non-attention blocks at 1: "default=0, BASE=1, OUT07-11=1" is not SD-OUTS
  assert.equal(matchPreset(parseBlockSpec("default=0, BASE=1, OUT07-11=1", "sd1"), "sd1"), null);
  assert.equal(matchPreset(parseBlockSpec("default=0.3", "sd1"), "sd1"), null);
  assert.throws(() => presetWeights("SD-ALL", "sdxl"),
    { message: /^preset SD-ALL: a vector of 17 values does not fit this model; it takes 12 values/ });
  assert.throws(() => parseBlockSpec("", "sd1", "LORA-XYZ"), { message: /^unknown block-weight preset 'LORA-XYZ'; known: SD-NONE, / });
});

test("formatNamed writes the most common value as default and ranges for runs", () => {
  const w = filled(SD1_26, 1, { IN04: 0.5, OUT03: 0.2, OUT04: 0.2, OUT05: 0.2, M00: 0 });
  assert.equal(formatNamed(w, "sd1"), "default=1, IN04=0.5, M00=0, OUT03-05=0.2");
  const zeros = filled(SDXL_20, 0, { BASE: 1, OUT00: 1, OUT01: 1 });
  assert.equal(formatNamed(zeros, "sdxl"), "default=0, BASE=1, OUT00-01=1");
  assert.equal(formatNamed(filled(SD1_26, 1), "sd1"), "default=1");
  assert.equal(formatNamed(filled(SD1_26, 0.1 + 0.2), "sd1"), "default=0.3", "float noise from slider steps is dropped");
});

test("formatVector picks the short form when the other blocks stay at 1", () => {
  const w = filled(SD1_26, 1, { IN01: 0, OUT11: 0.25 });
  assert.equal(formatVector(w, "sd1"), "1,0,1,1,1,1,1,1,1,1,1,1,1,1,1,1,0.25");
  w.IN00 = 0;
  assert.equal(formatVector(w, "sd1").split(",").length, 26);
  assert.equal(formatVector(w, "sd1").split(",")[1], "0");
  assert.throws(() => formatVector(w, "sd1", "short"), { message: /leaves IN00 at 1; use the full form/ });
  assert.equal(formatVector(filled(SDXL_20, 0.5), "sdxl", "full"), Array(20).fill("0.5").join(","));
});

test("round trips: vector -> weights -> named -> weights -> vector", () => {
  for (const family of ["sd1", "sdxl"]) {
    const layout = layoutFor(family);
    for (let seed = 1; seed <= 25; seed += 1) {
      // Deterministic pseudo-random weights on a 0.05 grid, some blocks equal.
      const values = layout.full.map((_, i) => Math.round(((seed * 37 + i * i * 11) % 41) / 20 * 20) / 20 - 0.5);
      const vec = values.map(formatNumber).join(",");
      const w1 = parseBlockSpec(vec, family);
      const named = formatNamed(w1, family);
      const w2 = parseBlockSpec(named, family, presetsFor(family)[0]); // preset must not matter
      expectWeights(w2, w1);
      assert.equal(formatVector(w2, family, "full"), vec);
    }
    for (const name of presetsFor(family)) {
      const w = presetWeights(name, family);
      expectWeights(parseBlockSpec(formatNamed(w, family), family), w);
      expectWeights(parseBlockSpec(formatVector(w, family), family), w);
    }
  }
});

test("errors say what is wrong, in the Python parser's words", () => {
  const cases = [
    ["1,2,3", "sd1", "block spec: a vector of 3 values does not fit this model; it takes 17 values (" +
      SD1_17.join(", ") + ") or 26 values (BASE, IN00–IN11, M00, OUT00–OUT11)"],
    ["IN04=x", "sd1", "block spec: IN04: 'x' is not a number"],
    ["IN04=inf", "sd1", "block spec: IN04: 'inf' is not a finite number"],
    ["1,2,abc", "sd1", "block spec: value 3: 'abc' is not a number"],
    ["IN12=0", "sd1", "block spec: unknown block 'IN12' in 'IN12'; this model has BASE, IN00–IN11, M00, OUT00–OUT11 (groups: IN, OUT, MID)"],
    ["IN09=0", "sdxl", "block spec: unknown block 'IN09' in 'IN09'; this model has BASE, IN00–IN08, M00, OUT00–OUT08 (groups: IN, OUT, MID)"],
    ["OUT05-03=0", "sd1", "block spec: range 'OUT05-03' runs backwards (OUT05 > OUT03)"],
    ["IN01-OUT03=0", "sd1", "block spec: range 'IN01-OUT03' must stay within IN blocks"],
    ["default=1, default=0", "sd1", "block spec: 'default' is given twice"],
    ["IN=1, in=0", "sd1", "block spec: group IN is given twice"],
    ["M=1, MID=0", "sd1", "block spec: group MID is given twice"],
    ["IN04=1, IN03-05=0", "sd1", "block spec: block IN04 is named twice (in 'IN03-05=0')"],
    ["IN04=1, 0.5", "sd1", "block spec: '0.5' is neither NAME=value nor part of a vector of numbers"],
    ["=1", "sd1", "block spec: '=1' names no block"],
    ["FOO=1", "sd1", "block spec: unknown block 'FOO' in 'FOO'; this model has BASE, IN00–IN11, M00, OUT00–OUT11 (groups: IN, OUT, MID)"],
  ];
  for (const [spec, family, message] of cases) {
    assert.throws(() => parseBlockSpec(spec, family), (e) => {
      assert.ok(e instanceof BlockSpecError, `${spec}: ${e}`);
      assert.equal(e.message, message, spec);
      return true;
    });
    const v = validateBlockSpec(spec, family);
    assert.equal(v.ok, false);
    assert.equal(v.error, message);
  }
  assert.deepEqual(validateBlockSpec("M00=0", "sd1").ok, true);
});

test("numbers are read like Python's float()", () => {
  const w = parseBlockSpec("IN00=+.5, IN01=1e-1, IN02=-2., IN03=1_0, IN04 = 3 ", "sd1");
  assert.equal(w.IN00, 0.5);
  assert.equal(w.IN01, 0.1);
  assert.equal(w.IN02, -2);
  assert.equal(w.IN03, 10);
  assert.equal(w.IN04, 3);
  for (const bad of ["0x10", "1__0", "", "1.2.3", "e5"]) {
    assert.throws(() => parseBlockSpec(`IN00=${bad}`, "sd1"), { message: /is not a number$/ }, bad);
  }
  assert.equal(pyRepr("it's"), `"it's"`);
  assert.equal(pyRepr("a\\b\n"), "'a\\\\b\\n'");
});

test("guessFamily reads preset names and vector lengths", () => {
  assert.equal(guessFamily("", "SDXL-ALL"), "sdxl");
  assert.equal(guessFamily("", "SD-ALL"), "sd1");
  assert.equal(guessFamily(Array(12).fill(1).join(",")), "sdxl");
  assert.equal(guessFamily(Array(26).fill(1).join(",")), "sd1");
  assert.equal(guessFamily("OUT11=0"), "sd1");
  assert.equal(guessFamily("OUT03=0"), null);
});
