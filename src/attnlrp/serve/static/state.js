// The view's state in the URL's hash, so that reloading the page or sending the link reproduces the view (given
// the same server). The access token never goes here: it lives in sessionStorage only (api.js).

export const VIEWS = ["tokens", "latent", "steer", "image"];

/** The default state: nothing explained yet. */
export function emptyState() {
  return {
    prompt: "",
    method: "",
    compare: "", // a second method shown side by side, or ""
    generated: false, // whether the view is a generation (of `tokens` new tokens)
    tokens: 8, // max new tokens (generation and steering)
    position: null, // the explained output position (null: the last one, or the whole answer)
    targetMode: "predicted", // "predicted" | "token" | "contrast"
    target: "",
    contrast: "",
    excludeFirst: null, // null: decided by whether the first token is special (BOS)
    view: "tokens",
    head: null, // [layer, head] shown over the tokens in the latent view
    neuron: null, // [layer, neuron] whose atlas samples are open
    steering: [], // [{layer, neuron, mode: "off" | "scale", value}]
  };
}

/** "3:17" → [3, 17], or null. */
export function parsePair(text, sep = ":") {
  const match = new RegExp(`^\\s*(\\d+)\\s*${sep}\\s*(\\d+)\\s*$`).exec(String(text));
  return match ? [Number(match[1]), Number(match[2])] : null;
}

function encodeSteering(edits) {
  return edits.map((e) => `${e.layer}:${e.neuron}${e.mode === "off" ? "" : `*${e.value}`}`).join(",");
}

function decodeSteering(text) {
  const edits = [];
  for (const part of String(text).split(",")) {
    const [pair, factor] = part.split("*");
    const neuron = parsePair(pair);
    if (!neuron) continue;
    const value = factor === undefined ? 0 : Number(factor);
    if (!Number.isFinite(value)) continue;
    edits.push({ layer: neuron[0], neuron: neuron[1], mode: factor === undefined ? "off" : "scale", value });
  }
  return edits;
}

/** The state as a hash fragment ("#prompt=…&method=…"); defaults are left out. */
export function toHash(state) {
  const params = new URLSearchParams();
  if (state.prompt) params.set("prompt", state.prompt);
  if (state.method) params.set("method", state.method);
  if (state.compare) params.set("compare", state.compare);
  if (state.generated) params.set("generate", String(state.tokens));
  else if (state.tokens !== emptyState().tokens) params.set("tokens", String(state.tokens));
  if (state.position !== null) params.set("position", String(state.position));
  if (state.targetMode !== "predicted") {
    params.set("target", state.target);
    if (state.targetMode === "contrast") params.set("contrast", state.contrast);
  }
  if (state.excludeFirst !== null) params.set("exclude_first", state.excludeFirst ? "1" : "0");
  if (state.view !== "tokens") params.set("view", state.view);
  if (state.head) params.set("head", state.head.join(":"));
  if (state.neuron) params.set("neuron", state.neuron.join(":"));
  if (state.steering.length) params.set("steer", encodeSteering(state.steering));
  const text = params.toString();
  return text ? `#${text}` : "";
}

/** The state a hash fragment describes (unknown or malformed entries fall back to the defaults). */
export function fromHash(hash) {
  const state = emptyState();
  const params = new URLSearchParams(String(hash).replace(/^#/, ""));
  const integer = (text) => (/^\d+$/.test(text || "") ? Number(text) : null);
  state.prompt = params.get("prompt") || "";
  state.method = params.get("method") || "";
  state.compare = params.get("compare") || "";
  if (params.has("generate")) {
    state.generated = true;
    state.tokens = integer(params.get("generate")) || state.tokens;
  } else if (params.has("tokens")) {
    state.tokens = integer(params.get("tokens")) || state.tokens;
  }
  state.position = integer(params.get("position"));
  if (params.has("contrast")) {
    state.targetMode = "contrast";
    state.target = params.get("target") || "";
    state.contrast = params.get("contrast") || "";
  } else if (params.has("target")) {
    state.targetMode = "token";
    state.target = params.get("target") || "";
  }
  if (params.has("exclude_first")) state.excludeFirst = params.get("exclude_first") === "1";
  const view = params.get("view");
  if (VIEWS.includes(view)) state.view = view;
  state.head = parsePair(params.get("head") || "");
  state.neuron = parsePair(params.get("neuron") || "");
  state.steering = decodeSteering(params.get("steer") || "");
  return state;
}
