// Small helpers shared by the UI's modules: DOM building, browser storage, notices, reply timing,
// and the sampling fields of a request.

export const $ = (id) => document.getElementById(id);

export function load(key, fallback) {
  try {
    const raw = localStorage.getItem(key);
    return raw === null ? fallback : JSON.parse(raw);
  } catch {
    return fallback;
  }
}

export function store(key, value) {
  try {
    localStorage.setItem(key, JSON.stringify(value));
  } catch (err) {
    showNotice(`Could not save in this browser's storage: ${err.message}`, "error");
  }
}

export function el(tag, attrs = {}, text = null) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "testid") node.dataset.testid = v;
    else node.setAttribute(k, v);
  }
  if (text !== null) node.textContent = text;
  return node;
}

export function newId() {
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
}

export function showNotice(text, kind = "info") {
  const notice = $("notice");
  notice.textContent = text;
  notice.dataset.kind = kind;
  notice.hidden = false;
}

export function hideNotice() {
  $("notice").hidden = true;
}

export function formatStats(s) {
  if (!s) return "";
  const parts = [`${s.tokens} token${s.tokens === 1 ? "" : "s"}`];
  if (s.tps !== null) parts.push(`${s.tps.toFixed(1)} tok/s`);
  if (s.ttft !== null) parts.push(`TTFT ${Math.round(s.ttft)} ms`);
  if (s.note) parts.push(s.note);
  return parts.join(" · ");
}

// Times one streamed reply: time to first token, then tokens per second over the decode.
export class Meter {
  constructor() {
    this.start = performance.now();
    this.first = null;
    this.pieces = 0;
    this.usage = null;
  }
  restart() {
    this.start = performance.now();
  }
  piece() {
    if (this.first === null) this.first = performance.now();
    this.pieces += 1;
  }
  stats(note = "") {
    const now = performance.now();
    const tokens = this.usage?.completion_tokens ?? this.pieces;
    const decodeSecs = this.first === null ? 0 : (now - this.first) / 1000;
    return {
      tokens,
      ttft: this.first === null ? null : this.first - this.start,
      tps: decodeSecs > 0.05 && tokens > 1 ? (tokens - 1) / decodeSecs : null,
      note,
    };
  }
}

export function waitMessage(seconds, err) {
  if (err.status === 503) return `The server is not ready (${err.message}) — retrying in ${seconds} s`;
  return `Server busy, retrying in ${seconds} s`;
}

// What a streaming request shows while it waits for a slot (429/503), and the clock restart once it starts.
export function waitNotices(meter) {
  return (seconds, err) => {
    if (seconds > 0) showNotice(waitMessage(seconds, err), "wait");
    else meter.restart();
  };
}

export function samplingBody(s, modelId) {
  const body = {};
  for (const key of ["temperature", "top_p", "min_p", "repeat_penalty"]) {
    if (s[key] !== undefined && s[key] !== "") body[key] = Number(s[key]);
  }
  for (const key of ["top_k", "max_tokens", "seed"]) {
    if (s[key] !== undefined && s[key] !== "") body[key] = Math.trunc(Number(s[key]));
  }
  const stops = (s.stop || "")
    .split("\n")
    .map((x) => x.replace(/\\n/g, "\n"))
    .filter((x) => x.length > 0);
  if (stops.length) body.stop = stops.slice(0, 4);
  if (modelId) body.model = modelId;
  return body;
}

export function download(name, type, text) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = el("a", { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 2000);
}

export function slug(title) {
  return title.replace(/[^\w-]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 40) || "conversation";
}
