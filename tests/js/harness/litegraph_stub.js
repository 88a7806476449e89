// A minimal stand-in for LiteGraph nodes as ComfyUI_frontend builds them from /object_info:
// widgets from the node definition (combo, number, text; multiline text owns a <textarea> as
// inputEl), addDOMWidget, serialize() honouring widget.serialize === false, and a plain DOM
// rendering so the page can be screenshotted.

function widgetFor(node, name, spec) {
  const [type, options = {}] = spec;
  const w = { name, options: { ...options }, callback: null, serialize: true };
  if (Array.isArray(type)) {
    w.type = "combo";
    w.options.values = type;
    w.value = options.default ?? type[0] ?? "";
  } else if (type === "INT" || type === "FLOAT") {
    w.type = "number";
    w.value = options.default ?? 0;
  } else if (type === "BOOLEAN") {
    w.type = "toggle";
    w.value = options.default ?? false;
  } else if (type === "STRING") {
    w.type = options.multiline ? "customtext" : "text";
    let value = options.default ?? "";
    if (options.multiline) {
      const area = document.createElement("textarea");
      area.value = value;
      area.addEventListener("input", () => { w.callback?.(w.value); });
      w.inputEl = area;
      Object.defineProperty(w, "value", { get: () => area.value, set: (v) => { area.value = v; } });
    } else {
      Object.defineProperty(w, "value", { get: () => value, set: (v) => { value = v; } });
    }
  } else {
    return null; // a linked input (MODEL, IMAGE…): a slot, not a widget
  }
  return w;
}

export function makeNodeType(def) {
  class StubNode {
    constructor() {
      this.type = def.name;
      this.title = def.display_name ?? def.name;
      this.properties = {};
      this.widgets = [];
      this.inputs = [];
      this.size = [340, 60];
      this.serialize_widgets = true;
      const order = def.input_order ?? {};
      for (const group of ["required", "optional"]) {
        const specs = def.input?.[group] ?? {};
        for (const name of order[group] ?? Object.keys(specs)) {
          const w = widgetFor(this, name, specs[name]);
          if (w) this.widgets.push(w);
          else this.inputs.push({ name, type: specs[name][0] });
        }
      }
    }
    addDOMWidget(name, type, element, options = {}) {
      const w = { name, type, element, options, value: undefined, serialize: options.serialize !== false };
      this.widgets.push(w);
      return w;
    }
    computeSize() {
      let h = 30 + 16 * this.inputs.length;
      for (const w of this.widgets) h += w.computeSize ? w.computeSize(this.size[0])[1] : 22;
      return [340, h];
    }
    setSize(size) { this.size = size; }
    setDirtyCanvas() { this.dirty = (this.dirty ?? 0) + 1; }
    serialize() {
      const values = [];
      this.widgets.forEach((w, i) => { if (w.serialize !== false) values[i] = w.value ?? null; });
      return { type: this.type, widgets_values: values, properties: { ...this.properties } };
    }
    /** The node as DOM (title, slots, widgets; DOM widgets' own elements). */
    render() {
      const box = document.createElement("div");
      box.className = "lg-node";
      box.setAttribute("data-node-type", this.type);
      const title = document.createElement("div");
      title.className = "lg-title";
      title.textContent = this.title;
      box.append(title);
      for (const slot of this.inputs) {
        const s = document.createElement("div");
        s.className = "lg-slot";
        s.textContent = `● ${slot.name} (${slot.type})`;
        box.append(s);
      }
      for (const w of this.widgets) {
        if (w.element) {
          const holder = document.createElement("div");
          holder.className = "lg-dom";
          holder.append(w.element);
          box.append(holder);
        } else if (w.inputEl) {
          const holder = document.createElement("div");
          holder.className = "lg-dom";
          holder.append(w.inputEl);
          box.append(holder);
        } else {
          const row = document.createElement("div");
          row.className = "lg-widget";
          const label = document.createElement("span");
          label.textContent = w.name;
          const value = document.createElement("span");
          value.textContent = String(w.value);
          row.append(label, value);
          box.append(row);
        }
      }
      return box;
    }
  }
  return StubNode;
}
