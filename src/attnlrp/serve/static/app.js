// The explorer page: prompt → explain or generate → click a position → compare methods → look inside the model →
// steer neurons and regenerate → export. State lives in the URL's hash (state.js); the server's API is in api.js;
// every text from the model, the tokenizer, the atlas or the user is put into the DOM as text (heatmap.js's el).

import { adoptToken, call, stream, ApiError } from "./api.js";
import { el, tokenStrip, legend, grid, score, exact, quoted, symmetricScale } from "./heatmap.js";
import { emptyState, fromHash, toHash, parsePair } from "./state.js";
import { exportHtml, exportJson, exportPng, exportToServer } from "./export.js";
import { setupImage } from "./image.js";

adoptToken();

const $ = (id) => document.getElementById(id);

/** What the server said about itself (GET /api/info). */
let info = null;
/** The view's state (mirrored in the URL's hash). */
let state = fromHash(window.location.hash);
/** What is on screen, as the server answered it (exported as JSON). */
const shownData = { primary: null, secondary: null, generation: null, latents: null, atlas: null, steering: null };
/** The last failed action, for the Retry button. */
let retryAction = null;
/** One AbortController per kind of request: a new request of a kind cancels the one before. */
const controllers = {};
/** Explanations by request: switching back to a method or position already seen costs nothing. */
const cache = new Map();
const CACHE_SIZE = 32;

// ---------------------------------------------------------------------------------------------- plumbing

function setStatus(text) {
  $("status").textContent = text;
}

function showError(error, action) {
  const box = $("error");
  let text = error instanceof Error ? error.message : String(error);
  if (error instanceof ApiError && error.hint) text += ` — ${error.hint}`;
  if (error instanceof ApiError && error.status === 429) text = `The server is busy (its queue is full): ${text}`;
  $("error-text").textContent = text;
  box.hidden = false;
  retryAction = action || null;
  $("retry").hidden = !retryAction;
  setStatus("");
}

function clearError() {
  $("error").hidden = true;
  retryAction = null;
}

/**
 * Run `work(signal)` as the request of `kind`: cancels the previous one of that kind, shows the busy state
 * (body[data-busy] counts running requests) and reports failures with a Retry. A string `work` resolves to is
 * left in the status line.
 */
async function task(kind, label, work) {
  if (controllers[kind]) controllers[kind].abort();
  const controller = new AbortController();
  controllers[kind] = controller;
  const body = document.body;
  body.dataset.busy = String(Number(body.dataset.busy) + 1);
  clearError();
  setStatus(label);
  try {
    const done = await work(controller.signal);
    if (controllers[kind] === controller) setStatus(typeof done === "string" ? done : "");
  } catch (error) {
    if (error && error.name === "AbortError") return;
    showError(error, () => task(kind, label, work));
  } finally {
    if (controllers[kind] === controller) delete controllers[kind];
    body.dataset.busy = String(Number(body.dataset.busy) - 1);
  }
}

function saveState({ push = false } = {}) {
  const url = window.location.pathname + window.location.search + toHash(state);
  if (push) history.pushState(null, "", url);
  else history.replaceState(null, "", url);
}

async function cachedCall(path, body, signal) {
  const key = path + JSON.stringify(body);
  if (cache.has(key)) return cache.get(key);
  const answer = await call(path, body, { signal });
  cache.set(key, answer);
  if (cache.size > CACHE_SIZE) cache.delete(cache.keys().next().value);
  return answer;
}

function methodNames() {
  return (info.methods || []).map((m) => (typeof m === "string" ? m : m.name));
}

// ----------------------------------------------------------------------------------------------- requests

/** What is explained at a position: the prompt, or once an answer was generated, the generation's exact tokens
 * (prompt and answer, as the model saw them: no second tokenization). */
function inputFields() {
  const generation = state.generated ? shownData.generation : null;
  return generation ? { token_ids: generation.token_ids } : { prompt: state.prompt };
}

/** The target fields of a request, as the target controls say. */
function targetFields() {
  const fields = {};
  if (state.targetMode !== "predicted" && state.target !== "") fields.target = tokenArgument(state.target);
  if (state.targetMode === "contrast" && state.contrast !== "") fields.contrast = tokenArgument(state.contrast);
  return fields;
}

/** As the CLI reads --target: digits are a token id, anything else a token string (kept verbatim). */
function tokenArgument(text) {
  return /^\d+$/.test(text) ? Number(text) : text;
}

function explainRequest(method) {
  const body = { ...inputFields(), method, ...targetFields() };
  if (state.position !== null) body.position = state.position;
  return body;
}

/** Whether the tokens view shows a generation's whole answer (no position chosen). */
function showsAnswer() {
  return state.generated && state.position === null && shownData.generation !== null;
}

// ----------------------------------------------------------------------------------------------- actions

async function explain() {
  if (!state.prompt) {
    showError(new Error("Type a prompt first."));
    return;
  }
  if (state.generated && !shownData.generation) {
    await generate();
    return;
  }
  await task("explain", "explaining…", async (signal) => {
    if (showsAnswer()) {
      shownData.primary = null;
    } else {
      shownData.primary = await cachedCall("/api/explain", explainRequest(state.method), signal);
    }
    shownData.secondary = null;
    renderTokens();
    if (state.compare && !showsAnswer()) {
      shownData.secondary = await cachedCall("/api/explain", explainRequest(state.compare), signal);
      renderTokens();
    }
  });
  if (state.view === "latent") await loadLatents();
}

async function generate() {
  if (!state.prompt) {
    showError(new Error("Type a prompt first."));
    return;
  }
  state.generated = true;
  saveState();
  shownData.generation = null;
  shownData.primary = shownData.secondary = null;
  const streamed = [];
  await task("explain", "generating…", async (signal) => {
    renderStreaming(streamed);
    await stream("/api/generate", { prompt: state.prompt, max_new_tokens: state.tokens, method: state.method },
      (name, payload) => {
        if (name === "token") {
          streamed.push(payload);
          document.body.dataset.streamed = String(streamed.length); // token events received (the browser test reads it)
          renderStreaming(streamed);
          setStatus(`generating… ${streamed.length} of at most ${state.tokens} tokens`);
        } else if (name === "relevance") {
          shownData.generation = payload;
          setStatus("explaining the answer…");
        }
      }, { signal });
    if (!shownData.generation) throw new Error("the generation ended without its relevance");
  });
  if (!shownData.generation) return;
  if (state.position !== null) await explain();
  else {
    renderTokens();
    if (state.view === "latent") await loadLatents();
  }
}

async function loadLatents() {
  if (!state.prompt || (state.generated && !shownData.generation)) return;
  const allowed = info.neuron_methods || methodNames();
  if (!allowed.includes(state.method)) {
    shownData.latents = null;
    $("latent-target").textContent = `Neuron and head relevance needs one of: ${allowed.join(", ")} ` +
      `(not ${state.method}). Choose one of them as the method.`;
    $("latent-body").replaceChildren();
    $("neurons-slot").replaceChildren();
    return;
  }
  await task("latent", "reading the model's insides…", async (signal) => {
    const body = { ...explainRequest(state.method), top_k: 20 };
    if (showsAnswer()) body.position = shownData.generation.prompt_length - 1;
    if (state.head) body.head = state.head;
    shownData.latents = await cachedCall("/api/latents", body, signal);
    renderLatents();
  });
  if (state.neuron) await openNeuron(state.neuron[0], state.neuron[1]);
}

async function openNeuron(layer, neuron) {
  state.neuron = [layer, neuron];
  saveState();
  const box = $("atlas");
  box.hidden = false;
  box.replaceChildren(el("h3", { text: `neuron ${layer}:${neuron}` }), el("p", { class: "muted", text: "loading its atlas samples…" }));
  await task("atlas", "reading the atlas…", async (signal) => {
    try {
      shownData.atlas = await call(`/api/atlas/${layer}/${neuron}`, undefined, { signal });
      renderAtlas();
    } catch (error) {
      if (!(error instanceof ApiError) || error.status !== 404) throw error;
      shownData.atlas = null;
      renderAtlasMissing(layer, neuron, error);
    }
  });
}

async function regenerate() {
  if (!state.prompt) {
    showError(new Error("Type a prompt first."));
    return;
  }
  if (!state.steering.length) {
    showError(new Error("Choose at least one neuron: type LAYER:NEURON and Add, or use a top neuron's “steer” button."));
    return;
  }
  const off = [], scale = {};
  for (const edit of state.steering) {
    const name = `${edit.layer}:${edit.neuron}`;
    if (edit.mode === "off") off.push(name);
    else scale[name] = edit.value;
  }
  const body = { prompt: state.prompt, off, scale, set: {}, max_new_tokens: state.tokens, method: state.method,
    ...targetFields() };
  await task("steer", "running the model before and after steering…", async (signal) => {
    shownData.steering = await call("/api/steer", body, { signal });
    renderSteering();
  });
}

// ----------------------------------------------------------------------------------------------- rendering

function excludeFirst(tokensInfo) {
  if (state.excludeFirst !== null) return state.excludeFirst;
  return Boolean(tokensInfo && tokensInfo.special && tokensInfo.special[0]);
}

function keepFor(data) {
  const exclude = excludeFirst(data);
  $("exclude-first").checked = exclude;
  return (i) => !(exclude && i === 0);
}

function generatedFrom(tokenIds) {
  const generation = state.generated ? shownData.generation : null;
  if (!generation) return null;
  const prefix = generation.token_ids.slice(0, generation.prompt_length);
  return prefix.every((id, i) => tokenIds[i] === id) ? generation.prompt_length : null;
}

/** Explain the prediction at token i; the keyboard focus comes back to that token once the view is redrawn. */
async function pick(i) {
  state.position = i;
  saveState({ push: true });
  const focused = document.activeElement && document.activeElement.classList.contains("token");
  await explain();
  if (focused) {
    const token = document.querySelector(`#panels .token[data-index="${i}"]`);
    if (token) token.focus();
  }
}

function renderStreaming(streamed) {
  $("explained").textContent = "Generating…";
  const strip = el("div", { class: "strip streaming", "aria-live": "polite", id: "streamed" });
  strip.append(el("span", { class: "prompt-text", text: state.prompt }));
  for (const token of streamed) {
    strip.append(el("span", { class: "token generated", dataset: { index: String(token.index) }, text: token.text }));
  }
  $("panels").replaceChildren(el("div", { class: "panel" }, strip));
}

function ledgerLine(ledger, value) {
  if (!ledger) return null;
  const total = ledger.input + ledger.absorbed;
  const sites = Object.entries(ledger.by_site || {}).map(([k, v]) => `${k} ${score(v)}`).join(", ");
  return el("p", { class: "ledger", title: sites ? `absorbed by site: ${sites}` : "nothing absorbed" },
    el("strong", { text: "ledger " }),
    `input ${score(ledger.input)} + absorbed ${score(ledger.absorbed)} = ${score(total)}`,
    ` · value ${score(value !== undefined ? value : ledger.value)}`,
    ledger.residual !== undefined ? ` · residual ${Number(ledger.residual).toExponential(1)}` : "");
}

function unhandledWarning(unhandled) {
  if (!unhandled || !unhandled.length) return null;
  const list = unhandled.map((u) => `${u.operation} in ${u.module}${u.count ? ` (×${u.count})` : ""}`).join(", ");
  return el("p", { class: "warning", role: "alert" },
    el("strong", { text: "⚠ operations without a rule: " }), list,
    ". The relevance of this model may not add up; `attnlrp audit` says which rule is missing.");
}

/** One explanation as a panel: method, heatmap over the tokens, legend, ledger, warnings. */
function explanationPanel(data, { title, pickable = true, scale } = {}) {
  const keep = keepFor(data);
  const position = data.target ? data.target.position : null;
  const strip = tokenStrip(data.tokens, data.relevance, {
    keep, scale, onPick: pickable ? pick : null, selected: position, after: position,
    generatedFrom: generatedFrom(data.token_ids), label: `${data.method}: relevance of each token`,
  });
  const panel = el("div", { class: "panel", dataset: { method: data.method, position: String(position) } },
    el("h3", { text: title || data.method }), strip.node,
    legend(strip.scale, keep(0) ? null : "the first token is left out of the scale"),
    ledgerLine(data.ledger, data.value), unhandledWarning(data.unhandled));
  return panel;
}

function describeTarget(target, value) {
  if (!target) return "";
  if (target.kind === "class") return `class ${target.token_id}${target.label ? ` (${target.label})` : ""}`;
  let text = `logit of ${quoted(target.token)}`;
  if (target.contrast_id !== null && target.contrast_id !== undefined) text += ` minus logit of ${quoted(target.contrast_token)}`;
  if (target.position !== null && target.position !== undefined) text += ` at position ${target.position}`;
  if (value !== undefined) text += ` = ${score(value)}`;
  return text;
}

function renderTokens() {
  const panels = [];
  if (showsAnswer()) {
    const g = shownData.generation;
    const keep = keepFor(g);
    const strip = tokenStrip(g.tokens, g.answer_relevance, { keep, onPick: pick, generatedFrom: g.prompt_length,
      label: `${g.method}: relevance of each token for the whole answer` });
    $("explained").textContent = `Explaining the whole answer (the sum of its ${g.generated.length} tokens' logits = ` +
      `${score(g.answer_value)}). Click a token to explain the prediction at that position.`;
    panels.push(el("div", { class: "panel", dataset: { method: g.method, position: "answer" } },
      el("h3", { text: g.method }), strip.node, legend(strip.scale, keep(0) ? null : "the first token is left out of the scale"),
      ledgerLine(g.answer_ledger, g.answer_value), unhandledWarning(g.unhandled)));
    if (state.compare) {
      panels.push(el("div", { class: "panel muted" }, el("h3", { text: state.compare }),
        el("p", { text: "Click a position to compare the two methods on the same target." })));
    }
  } else if (shownData.primary) {
    const p = shownData.primary;
    const at = p.target ? p.target.position : null;
    $("explained").textContent = `Explaining the ${describeTarget(p.target, p.value)}` +
      (at !== null && at !== undefined && p.tokens[at] !== undefined ? `: the prediction after ${quoted(p.tokens[at])}` : "") +
      ". Click any token to explain the prediction made at it.";
    panels.push(explanationPanel(p));
    if (state.compare) {
      panels.push(shownData.secondary ? explanationPanel(shownData.secondary)
        : el("div", { class: "panel muted" }, el("h3", { text: state.compare }), el("p", { text: "computing…" })));
    }
  }
  $("panels").replaceChildren(...panels);
  $("panels").classList.toggle("two", panels.length > 1);
  updateExports();
}

function renderLatents() {
  const answer = shownData.latents;
  if (!answer) return;
  const explanation = answer.explanation || {};
  const latents = answer.latents || {};
  const tokens = explanation.tokens || [];
  $("latent-target").textContent = `Inside the model for the ${describeTarget(explanation.target, explanation.value)}.`;
  const layers = latents.residual ? latents.residual.length : 0;
  const deepestFirst = [...Array(layers).keys()].reverse();
  const parts = [];

  const residual = grid(latents.residual || [], {
    order: deepestFirst, rowLabel: (l) => `layer ${l}`, colLabel: (c, full) => (full ? `#${c} ${quoted(tokens[c])}` : shortToken(tokens[c])),
    cellTitle: (l, c, v) => `layer ${l}, token #${c} ${quoted(tokens[c])}: ${exact(v)}`,
    label: "residual stream relevance: layers (deepest on top) × tokens",
  });
  residual.node.id = "residual-grid";
  parts.push(el("h3", { text: "Residual stream: relevance per layer and token" }), residual.node, legend(residual.scale));

  const heads = latents.heads || [];
  const selected = headSelected(latents);
  if (heads.length) {
    const headGrid = grid(heads, {
      order: deepestFirst, rowLabel: (l) => `layer ${l}`, colLabel: (h) => String(h), selected, cellWidth: "1.8rem",
      cellTitle: (l, h, v) => `layer ${l}, head ${h}: ${exact(v)} (press to see it over the tokens)`,
      onPick: (l, h) => { state.head = [l, h]; saveState(); loadLatents(); },
      label: "attention heads: relevance per layer × head",
    });
    headGrid.node.id = "head-grid";
    headGrid.node.classList.add("heads");
    parts.push(el("h3", { text: "Attention heads: relevance per layer × head (press a head)" }), headGrid.node, legend(headGrid.scale));
  }
  if (latents.head_tokens && tokens.length) {
    const strip = tokenStrip(tokens, latents.head_tokens, { label: "the chosen head's relevance over the tokens" });
    strip.node.id = "head-tokens";
    parts.push(el("h4", { text: selected ? `head ${selected[1]} of layer ${selected[0]} over the tokens` : "one head over the tokens" }),
      strip.node, legend(strip.scale));
  }
  $("latent-body").replaceChildren(...parts);
  $("neurons-slot").replaceChildren(neuronTable(latents.top_neurons || []));
  updateExports();
}

function headSelected(latents) {
  if (Array.isArray(latents.head) && latents.head.length === 2) return latents.head;
  if (state.head) return state.head;
  const top = (latents.top_heads || [])[0];
  return top ? [top.layer, top.head] : null;
}

function shortToken(token) {
  const text = String(token === undefined ? "" : token).replace(/\s/g, "·");
  return text.length > 6 ? `${text.slice(0, 5)}…` : text;
}

function neuronTable(neurons) {
  const scale = symmetricScale(neurons.map((n) => n.relevance));
  const body = el("tbody");
  for (const n of neurons) {
    const name = `${n.layer}:${n.neuron}`;
    const open = el("button", { type: "button", class: "link", "aria-label": `open neuron ${name}: its atlas samples`, dataset: { neuron: name }, text: name });
    open.addEventListener("click", () => openNeuron(n.layer, n.neuron));
    const steerButton = el("button", { type: "button", "aria-label": `add neuron ${name} to steering`, dataset: { steer: name }, text: "steer" });
    steerButton.addEventListener("click", () => addSteering(n.layer, n.neuron));
    const value = el("td", { class: "n", title: exact(n.relevance), text: score(n.relevance) });
    value.style.backgroundColor = relevanceBackground(n.relevance, scale);
    body.append(el("tr", {}, el("td", {}, open), value, el("td", { class: "n", text: Number(n.activation).toPrecision(3) }), el("td", {}, steerButton)));
  }
  return el("div", { id: "top-neurons" }, el("h3", { text: "Top MLP neurons (relevance summed over the tokens)" }),
    el("table", {}, el("thead", {}, el("tr", {}, el("th", { text: "layer:neuron" }), el("th", { text: "relevance" }),
      el("th", { text: "max activation" }), el("th", { text: "" }))), body));
}

function relevanceBackground(value, scale) {
  const t = scale > 0 ? Math.min(Math.abs(value) / scale, 1) : 0;
  const end = value > 0 ? [255, 64, 64] : [64, 128, 255];
  return `rgb(${end.map((e) => Math.floor(255 + (e - 255) * t + 0.5)).join(",")})`;
}

function renderAtlas() {
  const data = shownData.atlas;
  const box = $("atlas");
  const close = el("button", { type: "button", class: "close", "aria-label": "close the atlas panel", text: "×" });
  close.addEventListener("click", closeAtlas);
  const parts = [close, el("h3", { text: `neuron ${data.layer}:${data.neuron}` })];
  const meta = data.atlas || {};
  const description = [meta.model, meta.corpus, meta.windows_done !== undefined ? `${meta.windows_done} windows` : null]
    .filter(Boolean).join(" · ");
  if (description) parts.push(el("p", { class: "muted", text: `atlas: ${description}` }));
  for (const [kind, label, field] of [["actmax", "ActMax: the windows where it fires most", "activations"],
    ["relmax", "RelMax: the windows where it is most relevant", "relevance"]]) {
    const samples = data[kind] || [];
    parts.push(el("h4", { text: label }));
    if (!samples.length) parts.push(el("p", { class: "muted", text: "no samples" }));
    const list = el("ol", { class: "samples", dataset: { kind } });
    for (const sample of samples) {
      const values = sample[field] || [];
      const first = sample.first_scored || 0;
      const keep = (i) => i >= first;
      const strip = tokenStrip(sample.tokens, values, { keep, peak: sample.position,
        label: `${kind} sample ${sample.rank}` });
      list.append(el("li", {}, el("span", { class: "muted", text: `${score(sample.score)} at ${quoted(sample.token)} ` }), strip.node));
    }
    parts.push(list);
  }
  box.replaceChildren(...parts);
}

function renderAtlasMissing(layer, neuron, error) {
  const close = el("button", { type: "button", class: "close", "aria-label": "close the atlas panel", text: "×" });
  close.addEventListener("click", closeAtlas);
  $("atlas").replaceChildren(close, el("h3", { text: `neuron ${layer}:${neuron}` }),
    el("p", { class: "warning", id: "atlas-missing", text: error.message }),
    error.hint || (info && info.atlas_hint) ? el("p", { class: "muted", text: error.hint || info.atlas_hint }) : null);
}

function closeAtlas() {
  state.neuron = null;
  shownData.atlas = null;
  $("atlas").hidden = true;
  saveState();
}

function addSteering(layer, neuron) {
  if (!state.steering.some((e) => e.layer === layer && e.neuron === neuron)) {
    state.steering.push({ layer, neuron, mode: "off", value: 0 });
  }
  saveState();
  renderSteeringList();
  setStatus(`neuron ${layer}:${neuron} is in the steering list (view “Steering”)`);
}

function renderSteeringList() {
  const items = state.steering.map((edit, index) => {
    const name = `${edit.layer}:${edit.neuron}`;
    const mode = el("select", { "aria-label": `what to do with neuron ${name}` },
      el("option", { value: "off", text: "off" }), el("option", { value: "scale", text: "scale ×" }));
    mode.value = edit.mode;
    const factor = el("input", { type: "number", step: "0.1", value: String(edit.mode === "scale" ? edit.value : 0),
      "aria-label": `scale factor of neuron ${name}`, disabled: edit.mode !== "scale" });
    const remove = el("button", { type: "button", "aria-label": `remove neuron ${name}`, text: "remove" });
    mode.addEventListener("change", () => {
      edit.mode = mode.value;
      edit.value = edit.mode === "scale" ? Number(factor.value) || 0 : 0;
      factor.disabled = edit.mode !== "scale";
      saveState();
    });
    factor.addEventListener("change", () => { edit.value = Number(factor.value) || 0; saveState(); });
    remove.addEventListener("click", () => { state.steering.splice(index, 1); saveState(); renderSteeringList(); });
    return el("li", { dataset: { neuron: name } }, el("code", { text: name }), mode, factor, remove);
  });
  $("steer-list").replaceChildren(...items);
}

function renderSteering() {
  const result = shownData.steering;
  if (!result) return;
  const comparison = result.comparison || {};
  const explanations = result.explanations || {};
  const reference = comparison.reference ? comparison.reference.token : null;
  const both = ["before", "after"].map((k) => explanations[k]).filter(Boolean);
  // one scale for both heatmaps, so that the colours compare
  const scale = Math.max(0, ...both.map((e) => symmetricScale(e.relevance, keepFor(e))));
  const edits = (comparison.neurons || []).map((n) => `${n.layer}:${n.neuron} ${n.mode === "off" ? "off" : `× ${n.value}`}`).join(", ");
  const columns = ["before", "after"].map((side) => {
    const outcome = comparison[side] || {};
    const explanation = explanations[side];
    const probability = outcome.log_prob !== undefined ? Math.exp(outcome.log_prob) : null;
    const panel = el("div", { class: "panel", id: `steer-${side}`, dataset: { side } },
      el("h3", { text: side === "before" ? "before" : `after (${edits})` }),
      el("p", { class: "continuation" }, el("span", { class: "prompt-text", text: comparison.prompt || state.prompt }),
        el("strong", { class: "generated-text", text: outcome.generated || "" })),
      el("p", {}, `next token ${quoted(outcome.token)} · logit of ${quoted(reference)} `,
        el("strong", { class: "logit", text: score(outcome.logit) }),
        " · probability ", el("strong", { class: "probability", text: probability === null ? "?" : probability.toFixed(4) })));
    if (explanation) {
      panel.append(el("p", { class: "muted", text: `heatmap: ${describeTarget(explanation.target, explanation.value)}` }));
      const strip = tokenStrip(explanation.tokens, explanation.relevance, { keep: keepFor(explanation), scale,
        selected: explanation.target ? explanation.target.position : null, label: `relevance ${side} steering` });
      panel.append(...[strip.node, legend(scale, "one scale for before and after"),
        ledgerLine(explanation.ledger, explanation.value), unhandledWarning(explanation.unhandled)].filter(Boolean));
    }
    return panel;
  });
  $("steer-result").replaceChildren(...columns);
  $("steer-result").classList.add("two");
  updateExports();
}

// ------------------------------------------------------------------------------------------------ views

function showView(view) {
  if (state.view !== view) {
    state.view = view;
    saveState();
  }
  for (const name of ["tokens", "latent", "steer"]) {
    $(`view-${name}`).hidden = name !== view;
    const tab = $(`tab-${name}`);
    tab.setAttribute("aria-selected", String(name === view));
    tab.tabIndex = name === view ? 0 : -1;
  }
  updateExports();
}

function updateExports() {
  $("exports").hidden = !hasContent();
}

function hasContent() {
  return Boolean(shownData.primary || shownData.generation || shownData.latents || shownData.steering);
}

async function switchView(view) {
  showView(view);
  if (view === "latent" && !shownData.latents) await loadLatents();
  if (view === "latent" && shownData.latents) renderLatents();
  if (view === "steer") renderSteeringList();
}

// -------------------------------------------------------------------------------------------- controls

function readControls() {
  state.prompt = $("prompt").value;
  state.method = $("method").value;
  state.compare = $("compare-toggle").checked ? $("compare-method").value : "";
  const tokens = Number($("max-new").value);
  if (Number.isInteger(tokens) && tokens > 0) state.tokens = tokens;
  state.targetMode = document.querySelector('input[name="target-mode"]:checked').value;
  state.target = $("target").value;
  state.contrast = $("contrast").value;
}

function writeControls() {
  $("prompt").value = state.prompt;
  if (state.method) $("method").value = state.method;
  state.method = $("method").value;
  $("compare-toggle").checked = Boolean(state.compare);
  if (state.compare) $("compare-method").value = state.compare;
  $("max-new").value = String(state.tokens);
  const radio = document.querySelector(`input[name="target-mode"][value="${state.targetMode}"]`);
  if (radio) radio.checked = true;
  $("target").value = state.target;
  $("contrast").value = state.contrast;
  updateTargetInputs();
}

function updateTargetInputs() {
  const mode = document.querySelector('input[name="target-mode"]:checked').value;
  $("target").disabled = mode === "predicted";
  $("contrast").disabled = mode !== "contrast";
  $("contrast-minus").hidden = mode !== "contrast";
}

function resetResults() {
  shownData.primary = shownData.secondary = shownData.generation = shownData.latents = null;
  shownData.atlas = shownData.steering = null;
  $("atlas").hidden = true;
  $("steer-result").replaceChildren();
}

function wireControls() {
  $("text-form").addEventListener("submit", (event) => {
    event.preventDefault();
    readControls();
    resetResults();
    state.generated = false;
    state.position = null;
    showView("tokens");
    saveState({ push: true });
    explain();
  });
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      $("explain").click();
    }
  });
  $("generate").addEventListener("click", () => {
    readControls();
    resetResults();
    state.position = null;
    showView("tokens");
    saveState({ push: true });
    generate();
  });
  $("method").addEventListener("change", () => {
    readControls();
    saveState({ push: true });
    if (showsAnswer()) {
      shownData.latents = shownData.steering = null;
      generate();
    } else if (hasContent()) refresh();
  });
  for (const id of ["compare-toggle", "compare-method"]) {
    $(id).addEventListener("change", () => {
      readControls();
      saveState({ push: true });
      if (hasContent()) explain();
    });
  }
  for (const radio of document.querySelectorAll('input[name="target-mode"]')) {
    radio.addEventListener("change", () => {
      updateTargetInputs();
      if (radio.value === "predicted") applyTarget();
    });
  }
  $("apply-target").addEventListener("click", applyTarget);
  for (const id of ["target", "contrast"]) {
    $(id).addEventListener("keydown", (event) => {
      if (event.key === "Enter") {
        event.preventDefault();
        applyTarget();
      }
    });
  }
  $("exclude-first").addEventListener("change", () => {
    state.excludeFirst = $("exclude-first").checked;
    saveState();
    rerender();
  });
  for (const tab of document.querySelectorAll("#tabs [role=tab]")) {
    tab.addEventListener("click", () => switchView(tab.dataset.view));
    tab.addEventListener("keydown", (event) => {
      const tabs = [...document.querySelectorAll("#tabs [role=tab]")];
      const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
      if (!step) return;
      const next = tabs[(tabs.indexOf(tab) + step + tabs.length) % tabs.length];
      next.focus();
      next.click();
    });
  }
  $("steer-add").addEventListener("click", addTypedNeuron);
  $("steer-neuron").addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      addTypedNeuron();
    }
  });
  $("regenerate").addEventListener("click", () => {
    readControls();
    saveState();
    regenerate();
  });
  $("retry").addEventListener("click", () => {
    const action = retryAction;
    clearError();
    if (action) action();
  });
  window.addEventListener("popstate", () => {
    state = fromHash(window.location.hash);
    writeControls();
    restore();
  });
}

/** The export buttons (both modes, text and image). */
function wireExports() {
  $("export-html").addEventListener("click", () => exportHtml(state.view, exportTitle()));
  $("export-json").addEventListener("click", () => exportJson(state.view, exportPayload()));
  $("export-png").addEventListener("click", () => exportPng(state.view, shownData, pngOptions()));
  $("export-server").addEventListener("click", () => task("export", "saving on the server…", async () => {
    const name = await exportToServer(exportPayload());
    return `saved on the server as ${name}`;
  }));
}

function addTypedNeuron() {
  const neuron = parsePair($("steer-neuron").value);
  if (!neuron) {
    showError(new Error("Write a neuron as LAYER:NEURON, e.g. 12:345."));
    return;
  }
  $("steer-neuron").value = "";
  addSteering(neuron[0], neuron[1]);
}

function applyTarget() {
  readControls();
  if (state.targetMode !== "predicted" && !state.target) {
    showError(new Error("Type the target token A (a token string such as \" Paris\", or a token id)."));
    return;
  }
  if (state.targetMode === "contrast" && !state.contrast) {
    showError(new Error("Type the contrast token B."));
    return;
  }
  saveState({ push: true });
  if (hasContent()) refresh();
}

/** Recompute what the views show, after a change of method or target (explain() also reloads the latent view
 * when it is the one shown; a steering result is recomputed when it is shown, else dropped). */
function refresh() {
  shownData.latents = null;
  if (state.view === "steer" && shownData.steering) return regenerate();
  shownData.steering = null;
  $("steer-result").replaceChildren();
  return explain();
}

/** Draw again from what is already there (colour-scale choices). */
function rerender() {
  if (shownData.primary || showsAnswer()) renderTokens();
  if (shownData.steering) renderSteering();
  showView(state.view);
}

function exportTitle() {
  return `attnlrp explorer: ${info ? info.model : ""}`;
}

/** The view's data for the JSON export: the state (never the token), what the server answered, and under
 * `explanation` / `generation` the heatmap the view shows (what the server's HTML export draws). */
function exportPayload() {
  const { view, ...rest } = state;
  const payload = { model: info ? info.model : null, version: info ? info.version : null, view, state: rest,
    url_state: toHash(state), data: { ...shownData } };
  if (view === "tokens" && showsAnswer()) payload.generation = shownData.generation;
  else if (view === "tokens" && shownData.primary) payload.explanation = shownData.primary;
  else if (view === "latent" && shownData.latents) payload.explanation = shownData.latents.explanation;
  else if (view === "steer" && shownData.steering) payload.explanation = shownData.steering.explanations.after;
  else if (view === "image") payload.image = shownData.primary;
  return payload;
}

function pngOptions() {
  return { keep: (data) => keepFor(data) };
}

// -------------------------------------------------------------------------------------------------- start

/** Rebuild the view the URL's state describes. */
async function restore() {
  resetResults();
  renderSteeringList();
  showView(state.view === "image" ? "tokens" : state.view);
  if (!state.prompt) return;
  if (state.generated) await generate(); // each of the two loads the latent view too when it is the one shown
  else await explain();
  if (state.view === "steer" && state.steering.length) await regenerate();
}

async function start() {
  try {
    info = await call("/api/info");
  } catch (error) {
    $("model-line").textContent = "not connected";
    showError(error, () => window.location.reload());
    return;
  }
  const limits = info.limits || {};
  $("model-line").textContent = `${info.model} · ${info.kind}${info.atlas ? " · atlas loaded" : ""} · attnlrp ${info.version || ""}`;
  const names = methodNames();
  for (const select of [$("method"), $("compare-method")]) {
    select.replaceChildren(...names.map((name) => el("option", { value: name, text: name })));
  }
  $("method").value = info.default_method || names[0];
  $("compare-method").value = names.find((n) => n !== $("method").value) || names[0];
  if (limits.new_tokens) $("max-new").max = String(limits.new_tokens);
  $("export-server").hidden = !info.export;
  wireExports();
  if (isImageKind(info.kind)) {
    $("image-form").hidden = false;
    $("view-image").hidden = false;
    $("image-method").replaceChildren(...names.map((name) => el("option", { value: name, text: name })));
    $("image-method").value = $("method").value;
    setupImage({ task, showError, onResult: (result) => { shownData.primary = result; $("exports").hidden = false; state.view = "image"; } });
    return;
  }
  $("text-form").hidden = false;
  $("tabs").hidden = false;
  wireControls();
  writeControls();
  await restore();
}

function isImageKind(kind) {
  return kind === "image-cls";
}

start();
