// Export the current view: a standalone HTML page (the view's DOM, cloned and serialised by the browser, so every
// text stays escaped; inline CSS, no script), the JSON the server answered, or a PNG drawn on a canvas. Files are
// downloaded in the browser; with `attnlrp serve --export-dir` they can also be saved on the server, under a name
// the server makes (the server renders that HTML page itself).

import { call } from "./api.js";
import { drawGrid, drawSections, el } from "./heatmap.js";
import { imageCanvas } from "./image.js";

function stamp() {
  return new Date().toISOString().replace(/[:.]/g, "-").replace(/Z$/, "");
}

function download(blob, name) {
  const url = URL.createObjectURL(blob);
  const link = el("a", { href: url, download: name, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

/** The view as a standalone HTML document (a string). */
export async function viewHtml(view, title) {
  const source = document.getElementById(`view-${view}`);
  const styles = await fetch("/static/style.css").then((r) => (r.ok ? r.text() : ""), () => "");
  const page = document.implementation.createHTMLDocument(title);
  const header = page.createElement("header");
  header.className = "top";
  header.append(page.createElement("h1"));
  header.firstChild.textContent = title;
  const prompt = page.createElement("p");
  prompt.className = "muted";
  prompt.textContent = `prompt: ${document.getElementById("prompt").value}`;
  const main = page.createElement("main");
  main.append(prompt, staticCopy(source, page, true));
  page.body.append(header, main);
  // the style sheet is our own file, joined as text: a <style> element made here would count as inline style
  // under the page's Content-Security-Policy (the exported file has no such policy)
  return `<!doctype html>\n<html lang="en"><head><meta charset="utf-8">${page.querySelector("title").outerHTML}` +
    `<style>${styles.replace(/<\//g, "<\\/")}</style></head>${page.body.outerHTML}</html>\n`;
}

const DROPPED = new Set(["INPUT", "SELECT", "TEXTAREA", "SCRIPT"]);
const KEPT_ATTRIBUTES = ["id", "class", "title", "role", "aria-label", "data-index", "data-relevance", "data-method",
  "data-position", "data-side", "data-kind", "data-neuron"];

/**
 * An inert copy of `node` in `page`: controls become plain text (buttons → spans) or go, canvases become images,
 * hidden parts go. Built element by element, with colours copied through the CSSOM (the page's
 * Content-Security-Policy forbids style attributes, not style properties) and text as text nodes.
 */
function staticCopy(node, page, root = false) {
  if (node.nodeType === Node.TEXT_NODE) return page.createTextNode(node.textContent);
  if (node.nodeType !== Node.ELEMENT_NODE || DROPPED.has(node.tagName) || (node.hidden && !root)
    || node.classList.contains("close") || node.dataset.steer !== undefined) return null;
  if (node.tagName === "CANVAS") {
    const image = page.createElement("img");
    image.setAttribute("src", node.toDataURL("image/png"));
    image.setAttribute("alt", node.getAttribute("aria-label") || "");
    return image;
  }
  const copy = page.createElement(node.tagName === "BUTTON" ? "span" : node.tagName.toLowerCase());
  for (const name of KEPT_ATTRIBUTES) {
    if (node.hasAttribute(name)) copy.setAttribute(name, node.getAttribute(name));
  }
  if (node.style.cssText) copy.style.cssText = node.style.cssText;
  for (const child of node.childNodes) {
    const part = staticCopy(child, page);
    if (part) copy.append(part);
  }
  return copy;
}

export async function exportHtml(view, title) {
  const html = await viewHtml(view, title);
  download(new Blob([html], { type: "text/html;charset=utf-8" }), `attnlrp-${view}-${stamp()}.html`);
}

export function exportJson(view, payload) {
  const text = JSON.stringify(payload, null, 1);
  download(new Blob([text], { type: "application/json" }), `attnlrp-${view}-${stamp()}.json`);
}

/** The view drawn on a canvas: heatmaps as token boxes, grids as cells, the image as shown. */
export function viewCanvas(view, data, { keep }) {
  if (view === "image") return imageCanvas();
  if (view === "latent" && data.latents) {
    const latents = data.latents.latents || {};
    const order = (latents.residual || []).map((_, i) => i).reverse();
    return drawGrid(latents.residual || [], { title: "residual stream relevance (layers × tokens, deepest on top)", order });
  }
  const sections = [];
  const add = (title, explanation, values) => {
    if (!explanation) return;
    sections.push({ title, tokens: explanation.tokens, values: values || explanation.relevance, keep: keep(explanation),
      selected: explanation.target ? explanation.target.position : null });
  };
  if (view === "steer" && data.steering) {
    add("before steering", data.steering.explanations && data.steering.explanations.before);
    add("after steering", data.steering.explanations && data.steering.explanations.after);
  } else if (data.primary) {
    add(data.primary.method, data.primary);
    add(data.secondary ? data.secondary.method : "", data.secondary);
  } else if (data.generation) {
    add(`${data.generation.method}: the whole answer`, data.generation, data.generation.answer_relevance);
  }
  return sections.length ? drawSections(sections) : null;
}

export function exportPng(view, data, options) {
  const canvas = viewCanvas(view, data, options);
  if (!canvas) return;
  canvas.toBlob((blob) => download(blob, `attnlrp-${view}-${stamp()}.png`), "image/png");
}

/** Save the view's JSON and HTML in the server's --export-dir; resolves to the names the server chose. The server
 * renders the HTML itself, from `explanation` (an explain JSON) or `generation` (a generation JSON). */
export async function exportToServer(payload) {
  const json = await call("/api/export", { kind: "json", view: payload });
  const html = await call("/api/export", { kind: "html", view: payload });
  return `${json.name} and ${html.name}`;
}
