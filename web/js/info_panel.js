// UNet Lab: small read-only panels shown on nodes after a run (text lines, overlay preview).
// DOM only through the document it is given; text through textContent.

export function createTextPanel(doc, role) {
  const root = doc.createElement("div");
  root.className = "unetlab-info";
  root.setAttribute("data-role", role);
  Object.assign(root.style, {
    font: "11px monospace", color: "var(--input-text, #ddd)", background: "var(--comfy-input-bg, #222)",
    padding: "4px", borderRadius: "4px", whiteSpace: "pre-wrap", overflowWrap: "anywhere", overflow: "hidden",
    boxSizing: "border-box",
    width: "100%",
  });
  return {
    element: root,
    show(lines) {
      root.replaceChildren(...lines.map((line) => {
        const div = doc.createElement("div");
        div.textContent = line === "" ? "\u00a0" : line;
        return div;
      }));
      root.style.display = lines.length ? "" : "none";
    },
    lineCount: () => root.childElementCount,
    /** Rows the text takes when wrapped at ``charsPerRow`` characters. */
    wrappedRows: (charsPerRow) => [...root.children].reduce(
      (rows, line) => rows + Math.max(1, Math.ceil(line.textContent.length / Math.max(1, charsPerRow))), 0),
  };
}

export function createImagePanel(doc, role) {
  const root = doc.createElement("div");
  root.className = "unetlab-overlay";
  root.setAttribute("data-role", role);
  Object.assign(root.style, { display: "none", width: "100%", boxSizing: "border-box" });
  const img = doc.createElement("img");
  Object.assign(img.style, { maxWidth: "100%", maxHeight: "256px", display: "block", margin: "0 auto" });
  img.alt = "segmentation overlay";
  const caption = doc.createElement("div");
  Object.assign(caption.style, { font: "11px sans-serif", color: "var(--descrip-text, #999)", textAlign: "center" });
  root.append(img, caption);
  return {
    element: root,
    show(url, captionLines) {
      if (!url) { root.style.display = "none"; return; }
      img.src = url;
      caption.textContent = captionLines.join(" · ");
      root.style.display = "";
    },
    image: img,
  };
}
