// Talking to the server: JSON errors in OpenAI's shape, SSE streams read from fetch, and the
// waits a busy server asks for (429/503 with Retry-After).

export class ApiError extends Error {
  constructor(message, { status = 0, code = null, type = null, retryAfter = null } = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.type = type;
    this.retryAfter = retryAfter;
  }
}

export function isAbort(err) {
  return err && (err.name === "AbortError" || err.name === "StopError");
}

function headers(apiKey, json) {
  const h = {};
  if (json) h["Content-Type"] = "application/json";
  if (apiKey) h.Authorization = `Bearer ${apiKey}`;
  return h;
}

function retryAfterSeconds(response) {
  const raw = response.headers.get("Retry-After");
  if (!raw) return null;
  const secs = Number(raw);
  if (Number.isFinite(secs)) return Math.max(0, secs);
  const date = Date.parse(raw);
  return Number.isNaN(date) ? null : Math.max(0, (date - Date.now()) / 1000);
}

async function errorFrom(response) {
  let message = `${response.status} ${response.statusText || "error"}`;
  let code = null;
  let type = null;
  try {
    const body = await response.json();
    if (body && body.error) {
      message = body.error.message || message;
      code = body.error.code || null;
      type = body.error.type || null;
    }
  } catch {
    // Not JSON (a proxy's page, say): the status line is the best we have.
  }
  return new ApiError(message, { status: response.status, code, type, retryAfter: retryAfterSeconds(response) });
}

export async function getJson(path, { apiKey = "", signal } = {}) {
  let response;
  try {
    response = await fetch(path, { headers: headers(apiKey, false), signal, cache: "no-store" });
  } catch (err) {
    if (isAbort(err)) throw err;
    throw new ApiError("Cannot reach the server. Is llamaserve still running?", { status: 0 });
  }
  if (!response.ok) throw await errorFrom(response);
  return response.json();
}

export function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(new DOMException("stopped", "AbortError"));
      return;
    }
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    function onAbort() {
      clearTimeout(timer);
      reject(new DOMException("stopped", "AbortError"));
    }
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

const MAX_BUSY_RETRIES = 30;

// POST a streaming request. A 429 (queue full) or 503 (model loading) waits as long as the server
// asks and tries again; onWait(seconds, error) is told each second so the page can count down.
// Any other failure throws an ApiError; Stop (the signal) throws an AbortError.
export async function postStream(path, body, { apiKey = "", signal, onWait = () => {} } = {}) {
  for (let attempt = 0; ; attempt += 1) {
    let response;
    try {
      response = await fetch(path, {
        method: "POST",
        headers: headers(apiKey, true),
        body: JSON.stringify(body),
        signal,
        cache: "no-store",
      });
    } catch (err) {
      if (isAbort(err)) throw err;
      throw new ApiError("Cannot reach the server. Is llamaserve still running?", { status: 0 });
    }
    if (response.ok) return response;
    const err = await errorFrom(response);
    const busy = response.status === 429 || response.status === 503;
    if (!busy || attempt >= MAX_BUSY_RETRIES) throw err;
    let wait = Math.ceil(err.retryAfter ?? (response.status === 503 ? 2 : 1));
    wait = Math.min(Math.max(wait, 1), 60);
    for (let left = wait; left > 0; left -= 1) {
      onWait(left, err);
      await sleep(1000, signal);
    }
    onWait(0, err);
  }
}

// Yields {event, data} for each Server-Sent Event of a fetch response body, and
// {event: "comment", data} for comment lines (keep-alive pings, our progress reports).
export async function* readSse(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      let chunk;
      try {
        chunk = await reader.read();
      } catch (err) {
        if (isAbort(err)) throw err;
        throw new ApiError("The connection to the server broke off mid-reply. Is llamaserve still running?");
      }
      const { value, done } = chunk;
      if (done) break;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const raw = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let event = "message";
        const data = [];
        for (const line of raw.split("\n")) {
          if (line.startsWith(":")) yield { event: "comment", data: line.slice(1).trimStart() };
          if (!line || line.startsWith(":")) continue;
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          let value = colon < 0 ? "" : line.slice(colon + 1);
          if (value.startsWith(" ")) value = value.slice(1);
          if (field === "event") event = value;
          else if (field === "data") data.push(value);
        }
        if (data.length) yield { event, data: data.join("\n") };
      }
    }
  } finally {
    reader.releaseLock();
  }
}

// Yields parsed chunks of an OpenAI stream; an `event: error` becomes a thrown ApiError.
// onComment(text) hears each SSE comment (see progress.js).
export async function* readChunks(response, { onComment = () => {} } = {}) {
  for await (const { event, data } of readSse(response)) {
    if (event === "comment") {
      onComment(data);
      continue;
    }
    if (data === "[DONE]") return;
    let parsed;
    try {
      parsed = JSON.parse(data);
    } catch {
      throw new ApiError("The server sent a malformed stream event.");
    }
    if (event === "error" || parsed.error) {
      const e = parsed.error || {};
      throw new ApiError(e.message || "The server reported an error mid-stream.", { code: e.code, type: e.type });
    }
    yield parsed;
  }
}
