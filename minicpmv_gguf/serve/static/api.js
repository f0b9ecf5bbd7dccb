// The server's API as the page uses it: JSON requests with the session's API key, the streamed chat
// reply read line by line from server-sent events, and errors turned into plain words.

const KEY = "minicpmv.apiKey";
let askKey = null;
let asking = null;

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// `ask(refused)` shows the key dialog and resolves to a key or null; the page sets it once.
export function onKeyNeeded(ask) {
  askKey = ask;
}

export function hasKey() {
  return Boolean(sessionStorage.getItem(KEY));
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = sessionStorage.getItem(KEY);
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

// One dialog for every request that met a 401 at the same time.
function keyFromUser(refused) {
  asking ||= askKey(refused).finally(() => (asking = null));
  return asking;
}

function plainWords(status, message, sentKey) {
  if (status === 0) return "Could not reach the server. Is `minicpmv-gguf serve` still running?";
  if (status === 401) {
    return sentKey ? "The server refused the API key. Send again to enter another one."
      : "This server needs an API key (serve --api-key). Send again to enter it.";
  }
  if (status === 413) {
    return `That is too big for this server (${message}). Attach a smaller image, or start a new conversation: `
      + "each message sends the conversation's images again.";
  }
  if (status === 503) return `The server is busy (${message}). Try again in a moment.`;
  if (status >= 500) return `The server failed: ${message}`;
  return `The server refused this message: ${message}`;
}

async function errorOf(res, sentKey) {
  let message = res.statusText || `HTTP ${res.status}`;
  try {
    const body = await res.json();
    message = body?.error?.message || (typeof body?.detail === "string" ? body.detail : message);
  } catch {
    // not JSON: keep the status text
  }
  return new ApiError(res.status, plainWords(res.status, message, sentKey));
}

// fetch with the key; on a 401 it asks for the key (once per tab) and tries again with it.
export async function request(path, { body, signal } = {}) {
  for (let attempt = 0; ; attempt++) {
    const sentKey = sessionStorage.getItem(KEY);
    let res;
    try {
      res = await fetch(path, {
        method: body === undefined ? "GET" : "POST",
        headers: headers(),
        body: body === undefined ? undefined : JSON.stringify(body),
        signal,
      });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new ApiError(0, plainWords(0));
    }
    if (res.status === 401 && askKey && attempt < 3) {
      // A second request that failed with the old key while the user typed a new one just retries.
      if (sessionStorage.getItem(KEY) !== sentKey) continue;
      const key = await keyFromUser(Boolean(sentKey));
      if (key) {
        sessionStorage.setItem(KEY, key);
        continue;
      }
    }
    if (!res.ok) throw await errorOf(res, sentKey);
    return res;
  }
}

// POSTs a streamed chat request and calls `onChunk` with each parsed chunk until [DONE].
export async function streamChat(body, signal, onChunk) {
  const res = await request("v1/chat/completions", { body, signal });
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    const lines = buffer.split("\n");
    buffer = lines.pop();
    for (const line of lines) {
      if (!line.startsWith("data:")) continue;
      const data = line.slice(5).trim();
      if (data === "[DONE]") return;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new ApiError(chunk.error.code || 500, plainWords(500, chunk.error.message));
      onChunk(chunk);
    }
  }
}
