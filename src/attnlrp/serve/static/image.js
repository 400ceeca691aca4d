// Image mode (a server started with an image classifier): an image chosen or dropped is drawn on a canvas and sent
// to /api/explain-image; its patch relevance is drawn over it. The image is decoded with createImageBitmap, so no
// blob: URL is needed (the page's Content-Security-Policy allows images from the server only).

import { call } from "./api.js";
import { css, exact, legend, relevanceRgb, score, symmetricScale } from "./heatmap.js";

const $ = (id) => document.getElementById(id);
let current = null; // {file, bitmap, result}

/** Wire the file input and the drop zone; `hooks`: task, showError, onResult (from app.js). */
export function setupImage(hooks) {
  const input = $("image-file");
  const zone = $("drop-zone");
  input.addEventListener("change", () => {
    if (input.files && input.files[0]) explainImage(input.files[0], hooks);
  });
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) explainImage(file, hooks);
  });
  $("image-overlay").addEventListener("change", draw);
  $("image-method").addEventListener("change", () => {
    if (current) explainImage(current.file, hooks);
  });
}

async function explainImage(file, hooks) {
  if (!file.type.startsWith("image/")) {
    hooks.showError(new Error(`${file.name || "this file"} is not an image`));
    return;
  }
  await hooks.task("image", "explaining the image…", async (signal) => {
    const bitmap = await createImageBitmap(file);
    current = { file, bitmap, result: null };
    draw();
    const method = encodeURIComponent($("image-method").value);
    current.result = await call(`/api/explain-image?method=${method}`, file, { signal });
    hooks.onResult(current.result);
    draw();
  });
}

/** The image, scaled to 512 pixels on its longer side, with the relevance grid over it (alpha-blended). */
function draw() {
  if (!current) return;
  const { bitmap, result } = current;
  const canvas = $("image-canvas");
  const factor = 512 / Math.max(bitmap.width, bitmap.height);
  canvas.width = Math.round(bitmap.width * factor);
  canvas.height = Math.round(bitmap.height * factor);
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = factor < 1; // a small image (a digit) is enlarged with its pixels kept sharp
  ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  const text = $("image-result");
  if (!result) {
    text.textContent = "explaining…";
    return;
  }
  const rows = result.relevance || [];
  const scale = symmetricScale(rows.flat());
  if ($("image-overlay").checked && rows.length) {
    const h = canvas.height / rows.length;
    ctx.globalAlpha = 0.6;
    rows.forEach((row, r) => {
      const w = canvas.width / row.length;
      row.forEach((value, c) => {
        ctx.fillStyle = css(relevanceRgb(value, scale));
        ctx.fillRect(c * w, r * h, Math.ceil(w), Math.ceil(h));
      });
    });
    ctx.globalAlpha = 1;
  }
  const probability = result.probability !== undefined ? ` (probability ${Number(result.probability).toFixed(4)})` : "";
  text.textContent = `Predicted class ${result.class_id}${result.label ? ` “${result.label}”` : ""}${probability}; ` +
    `relevance total ${score(rows.flat().reduce((a, b) => a + b, 0))}.`;
  canvas.title = `patch relevance; full colour at ${exact(scale)}`;
  $("image-legend").replaceChildren(legend(scale));
}

/** The canvas as shown (the PNG export of image mode). */
export function imageCanvas() {
  return current ? $("image-canvas") : null;
}
