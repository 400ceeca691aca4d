// The server's JSON API (docs/serve.md, "API"): the access token, JSON requests, and the generation stream.
// The token reaches the page once, in its own URL (?token=…); it is kept in sessionStorage, sent as an
// Authorization header, and removed from the visible URL so that a shared link never carries it.

const TOKEN_KEY = "attnlrp-token";

/** Move ?token=… from the address bar into sessionStorage (called once, before any request). */
export function adoptToken() {
  const url = new URL(window.location.href);
  const token = url.searchParams.get("token");
  if (token !== null) {
    sessionStorage.setItem(TOKEN_KEY, token);
    url.searchParams.delete("token");
    history.replaceState(history.state, "", url.pathname + url.search + url.hash);
  }
}

function headers(extra) {
  const out = { ...extra };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) out.Authorization = `Bearer ${token}`;
  return out;
}

/** An API failure: the server's message, the HTTP status (429: the queue is full, try again). */
export class ApiError extends Error {
  constructor(message, status, hint) {
    super(message);
    this.status = status;
    this.hint = hint || null;
  }
}

async function failure(response) {
  let message = `${response.status} ${response.statusText}`;
  let hint = null;
  try {
    const body = await response.json();
    if (body && typeof body.error === "string") message = body.error;
    if (body && typeof body.hint === "string") hint = body.hint;
  } catch (_) {
    // not JSON: keep the status line
  }
  if (response.status === 401 || response.status === 403) {
    message += " — open the page with the URL `attnlrp serve` printed (it carries the access token)";
  }
  return new ApiError(message, response.status, hint);
}

/** GET or POST a JSON API call; resolves to the parsed answer, rejects with an ApiError. */
export async function call(path, body, { signal, method } = {}) {
  const init = { method: method || (body === undefined ? "GET" : "POST"), headers: headers({}), signal };
  if (body !== undefined) {
    if (body instanceof Blob) {
      init.body = body;
      init.headers["Content-Type"] = body.type || "application/octet-stream";
    } else {
      init.body = JSON.stringify(body);
      init.headers["Content-Type"] = "application/json";
    }
  }
  const response = await fetch(path, init);
  if (!response.ok) throw await failure(response);
  return response.json();
}

/**
 * POST a request answered with Server-Sent Events and call onEvent(name, data) for each event as it arrives
 * (EventSource can neither POST nor send headers, so the stream is read with fetch). Resolves when the
 * stream ends; an `error` event rejects with its message.
 */
export async function stream(path, body, onEvent, { signal } = {}) {
  const response = await fetch(path, {
    method: "POST",
    headers: headers({ "Content-Type": "application/json", Accept: "text/event-stream" }),
    body: JSON.stringify(body),
    signal,
  });
  if (!response.ok) throw await failure(response);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    buffer += decoder.decode(value || new Uint8Array(), { stream: !done });
    buffer = buffer.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const event = parseEvent(block);
      if (event === null) continue;
      if (event.name === "error") {
        throw new ApiError((event.data && event.data.error) || "the generation failed", 500);
      }
      onEvent(event.name, event.data);
    }
    if (done) return;
  }
}

function parseEvent(block) {
  let name = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) continue; // a comment (keep-alive)
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") name = value;
    else if (field === "data") data.push(value);
  }
  if (!data.length) return name === "message" ? null : { name, data: null };
  const text = data.join("\n");
  try {
    return { name, data: JSON.parse(text) };
  } catch (_) {
    return { name, data: text };
  }
}
