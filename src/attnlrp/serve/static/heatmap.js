// Relevance → colour, and the views built from it: token strips, legends, grids. Every string that came from the
// model, the tokenizer, the atlas or the user enters the DOM as text (textContent), never as markup.

// The stops of attnlrp.render.colors: white at 0, linear towards red (+) or blue (−), full at |value| ≥ scale.
export const POSITIVE_RGB = [255, 64, 64];
export const NEGATIVE_RGB = [64, 128, 255];
export const NAN_RGB = [190, 190, 190];
const WHITE = [255, 255, 255];

/** Colour of `value` on a scale symmetric around 0 (as relevance_rgb in render/colors.py). */
export function relevanceRgb(value, scale) {
  if (Number.isNaN(value)) return NAN_RGB;
  if (!Number.isFinite(scale) || scale <= 0 || value === 0) return WHITE;
  const t = Math.min(Math.abs(value) / scale, 1);
  const end = value > 0 ? POSITIVE_RGB : NEGATIVE_RGB;
  return WHITE.map((w, i) => Math.floor(w + (end[i] - w) * t + 0.5));
}

export function css(rgb) {
  return `rgb(${rgb[0]},${rgb[1]},${rgb[2]})`;
}

/** Largest finite |value| among those kept (keep(i) false leaves index i out), 0 if none. */
export function symmetricScale(values, keep = () => true) {
  let scale = 0;
  values.forEach((v, i) => {
    if (keep(i) && Number.isFinite(v)) scale = Math.max(scale, Math.abs(v));
  });
  return scale;
}

/** Signed fixed point, as format_score in render/ranking.py: the sign is the point of LRP. */
export function score(value, digits = 3) {
  if (value === null || value === undefined || Number.isNaN(value)) return "nan";
  return (value >= 0 ? "+" : "") + value.toFixed(digits);
}

/** A short exact form for tooltips (6 significant digits, signed). */
export function exact(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "nan";
  return (value >= 0 ? "+" : "") + Number(value).toPrecision(6);
}

/** How a token is shown in place: control characters made visible, a newline as ↵ (then a real break). */
export function shown(token) {
  return String(token).replace(/[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g,
    (ch) => `\\u${ch.charCodeAt(0).toString(16).padStart(4, "0")}`).replace(/\n/g, "↵\n");
}

/** A token quoted for tooltips and tables: JSON string syntax makes spaces and escapes visible. */
export function quoted(token) {
  return JSON.stringify(String(token)).replace(/[\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g,
    (ch) => `\\u${ch.charCodeAt(0).toString(16).padStart(4, "0")}`);
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "text") node.textContent = String(value);
    else if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/**
 * Tokens as a strip of buttons coloured by `values`. Options: `scaleOf` (indices kept in the colour scale),
 * `onPick(i)` (makes each token a button: click, Enter or Space), `selected` (the explained position, outlined),
 * `after` (tokens after this index are not inputs of the explained output: dimmed), `generatedFrom` (index of
 * the first generated token), `peak` (an index drawn bold). Returns {node, scale}.
 */
export function tokenStrip(tokens, values, opts = {}) {
  const keep = opts.keep || (() => true);
  const scale = opts.scale !== undefined ? opts.scale : symmetricScale(values, keep);
  const strip = el("div", { class: "strip", role: opts.onPick ? "group" : null, "aria-label": opts.label || null });
  tokens.forEach((token, i) => {
    const value = values[i];
    const tag = opts.onPick ? "button" : "span";
    const node = el(tag, {
      class: "token",
      type: opts.onPick ? "button" : null,
      dataset: { index: String(i), relevance: String(value) },
      title: `#${i} ${quoted(token)} ${value === undefined ? "" : exact(value)}${keep(i) ? "" : " (left out of the colour scale)"}`,
    });
    node.textContent = shown(token);
    if (value !== undefined) node.style.backgroundColor = css(relevanceRgb(value, scale));
    if (!keep(i)) node.classList.add("unscaled");
    if (opts.generatedFrom !== undefined && opts.generatedFrom !== null && i >= opts.generatedFrom) {
      node.classList.add("generated");
    }
    if (opts.after !== undefined && opts.after !== null && i > opts.after) node.classList.add("later");
    if (i === opts.selected) {
      node.classList.add("selected");
      node.setAttribute("aria-current", "true");
    }
    if (i === opts.peak) node.classList.add("peak");
    if (opts.onPick) {
      node.setAttribute("aria-label", `token ${i} ${quoted(token)}, relevance ${exact(value)}: explain the prediction here`);
      node.addEventListener("click", () => opts.onPick(i));
    }
    strip.append(node);
  });
  return { node: strip, scale };
}

/** The colour legend: −scale, the gradient, +scale, and what the scale is. */
export function legend(scale, note) {
  const bar = el("span", { class: "bar", "aria-hidden": "true" });
  bar.style.background = `linear-gradient(to right,${css(NEGATIVE_RGB)},#fff,${css(POSITIVE_RGB)})`;
  return el("div", { class: "legend", role: "img",
    "aria-label": `colour scale: blue negative to ${score(-scale)}, white 0, red positive to ${score(scale)}` },
  el("span", { text: score(-scale) }), bar, el("span", { text: score(scale) }),
  el("span", { class: "note", text: `white = 0; full colour at |relevance| ≥ ${scale.toPrecision(3)}${note ? `; ${note}` : ""}` }));
}

/**
 * A heatmap grid (rows × columns) as a CSS grid of cells with exact values on hover. `rowLabel(r)`,
 * `colLabel(c)`: header texts; `onPick(r, c)` makes cells buttons; `order`: row indices top to bottom.
 */
export function grid(matrix, { rowLabel, colLabel, onPick, order, label, selected, cellTitle, cellWidth } = {}) {
  const rows = order || matrix.map((_, r) => r);
  const columns = matrix.length ? matrix[0].length : 0;
  const scale = symmetricScale(matrix.flat());
  // a group of cells, not an ARIA table: the values are in each cell's title (and its aria-label when it is a button)
  const node = el("div", { class: "grid", role: "group", "aria-label": label || null });
  node.style.gridTemplateColumns = `max-content repeat(${columns}, ${cellWidth || "1.2rem"})`;
  node.append(el("span", { class: "corner" }));
  for (let c = 0; c < columns; c++) {
    node.append(el("span", { class: "colhead", title: colLabel ? colLabel(c, true) : null, text: colLabel ? colLabel(c) : String(c) }));
  }
  for (const r of rows) {
    node.append(el("span", { class: "rowhead", text: rowLabel ? rowLabel(r) : String(r) }));
    matrix[r].forEach((value, c) => {
      const title = cellTitle ? cellTitle(r, c, value) : exact(value);
      const cell = el(onPick ? "button" : "span", { class: "cell", type: onPick ? "button" : null, title,
        "aria-label": onPick ? title : null, dataset: { row: String(r), col: String(c) } });
      cell.style.backgroundColor = css(relevanceRgb(value, scale));
      if (selected && selected[0] === r && selected[1] === c) {
        cell.classList.add("selected");
        cell.setAttribute("aria-pressed", "true");
      }
      if (onPick) cell.addEventListener("click", () => onPick(r, c));
      node.append(cell);
    });
  }
  return { node, scale };
}

// ------------------------------------------------------------------------------------------- PNG drawing

/**
 * Draw titled token strips onto a new canvas (the PNG export): each section {title, tokens, values, keep,
 * selected}, wrapped to `width` pixels, with its legend. Returns the canvas.
 */
export function drawSections(sections, width = 1000) {
  const pad = 16, lineHeight = 22, font = "14px ui-monospace, Menlo, Consolas, monospace";
  const measure = document.createElement("canvas").getContext("2d");
  measure.font = font;
  const layouts = sections.map((section) => layout(section, measure, width - 2 * pad, lineHeight));
  const height = pad + layouts.reduce((h, l) => h + l.height + 60, 0);
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, width, height);
  let y = pad;
  sections.forEach((section, s) => {
    ctx.fillStyle = "#111";
    ctx.font = "bold 15px system-ui, sans-serif";
    ctx.fillText(section.title, pad, y + 14);
    y += 24;
    ctx.font = font;
    for (const box of layouts[s].boxes) {
      ctx.fillStyle = css(relevanceRgb(box.value, layouts[s].scale));
      ctx.fillRect(pad + box.x, y + box.y, box.w, lineHeight - 2);
      if (box.selected) {
        ctx.strokeStyle = "#000";
        ctx.lineWidth = 2;
        ctx.strokeRect(pad + box.x, y + box.y, box.w, lineHeight - 2);
      }
      ctx.fillStyle = "#000";
      ctx.fillText(box.text, pad + box.x, y + box.y + 15);
    }
    y += layouts[s].height + 6;
    drawLegend(ctx, pad, y, layouts[s].scale);
    y += 30;
  });
  return canvas;
}

function layout(section, ctx, width, lineHeight) {
  const keep = section.keep || (() => true);
  const scale = symmetricScale(section.values, keep);
  const boxes = [];
  let x = 0, y = 0;
  section.tokens.forEach((token, i) => {
    const pieces = shown(token).split("\n");
    pieces.forEach((text, p) => {
      if (p > 0) { x = 0; y += lineHeight; }
      const w = Math.max(ctx.measureText(text).width, 4);
      if (x + w > width && x > 0) { x = 0; y += lineHeight; }
      boxes.push({ x, y, w, text, value: section.values[i], selected: i === section.selected });
      x += w;
    });
  });
  return { boxes, scale, height: y + lineHeight };
}

function drawLegend(ctx, x, y, scale) {
  const width = 200;
  const gradient = ctx.createLinearGradient(x + 60, 0, x + 60 + width, 0);
  gradient.addColorStop(0, css(NEGATIVE_RGB));
  gradient.addColorStop(0.5, "#fff");
  gradient.addColorStop(1, css(POSITIVE_RGB));
  ctx.font = "12px system-ui, sans-serif";
  ctx.fillStyle = "#111";
  ctx.fillText(score(-scale), x, y + 12);
  ctx.fillStyle = gradient;
  ctx.fillRect(x + 60, y + 2, width, 12);
  ctx.strokeStyle = "#999";
  ctx.lineWidth = 1;
  ctx.strokeRect(x + 60, y + 2, width, 12);
  ctx.fillStyle = "#111";
  ctx.fillText(`${score(scale)}   (white = 0)`, x + 70 + width, y + 12);
}

/** Draw a matrix as coloured cells (the PNG export of a grid), deepest row first when `order` says so. */
export function drawGrid(matrix, { title, order, cell = 12 } = {}) {
  const rows = order || matrix.map((_, r) => r);
  const columns = matrix.length ? matrix[0].length : 0;
  const scale = symmetricScale(matrix.flat());
  const pad = 16;
  const canvas = document.createElement("canvas");
  canvas.width = Math.max(2 * pad + 40 + columns * cell, 360);
  canvas.height = 2 * pad + 30 + rows.length * cell + 30;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.fillStyle = "#111";
  ctx.font = "bold 15px system-ui, sans-serif";
  ctx.fillText(title || "", pad, pad + 12);
  ctx.font = "10px system-ui, sans-serif";
  rows.forEach((r, y) => {
    ctx.fillStyle = "#111";
    ctx.fillText(String(r), pad, pad + 30 + y * cell + cell - 2);
    matrix[r].forEach((value, c) => {
      ctx.fillStyle = css(relevanceRgb(value, scale));
      ctx.fillRect(pad + 40 + c * cell, pad + 30 + y * cell, cell, cell);
    });
  });
  drawLegend(ctx, pad, pad + 36 + rows.length * cell, scale);
  return canvas;
}
