// Prompt progress: the server's `: queued {...}` and `: progress {...}` SSE comments
// (stream_options.include_progress, see the README) shown as a bar while a prompt waits for a
// slot and while it is read, until the first token arrives. OpenAI clients never see them.

import { el } from "./util.js";

// Merged into a request's stream_options.
export const PROGRESS_OPTION = { include_progress: true };

// {kind: "queued", position} or {kind: "progress", total, cached, processed, time_ms}, or null
// for any other comment (keep-alive pings).
export function parseProgress(text) {
  const space = text.indexOf(" ");
  const kind = space < 0 ? text : text.slice(0, space);
  if (kind !== "queued" && kind !== "progress") return null;
  try {
    const body = JSON.parse(text.slice(space + 1));
    return body && typeof body === "object" ? { ...body, kind } : null;
  } catch {
    return null;
  }
}

function plural(n, word) {
  return `${n.toLocaleString()} ${word}${n === 1 ? "" : "s"}`;
}

// One request's bar. Put `node` on the page, pass `onComment` to readChunks, call finish() at
// the first token (and when the request ends, whatever way).
export class PromptProgress {
  constructor() {
    this.node = el("div", { class: "prompt-progress", testid: "prompt-progress", role: "progressbar" });
    this.node.setAttribute("aria-valuemin", "0");
    this.node.setAttribute("aria-valuemax", "100");
    this.label = el("div", { class: "prompt-progress-label", testid: "prompt-progress-label" });
    this.fill = el("div", { class: "prompt-progress-fill" });
    const track = el("div", { class: "prompt-progress-track" });
    track.append(this.fill);
    this.node.append(this.label, track);
    this.node.hidden = true;
    this.finished = false;
    this.onComment = (text) => this.update(parseProgress(text));
  }

  update(p) {
    if (!p || this.finished || (p.index ?? 0) !== 0) return; // the bar follows the first choice
    const node = this.node;
    if (p.kind === "queued") {
      node.dataset.state = "queued";
      node.dataset.position = String(p.position);
      this.label.textContent = `Waiting for a slot (position ${p.position})`;
      this.set(0);
    } else {
      const total = Math.max(1, p.total || 0);
      node.dataset.state = "reading";
      node.dataset.processed = String(p.processed);
      node.dataset.total = String(p.total);
      delete node.dataset.position;
      const cached = p.cached ? ` · ${plural(p.cached, "token")} cached` : "";
      this.label.textContent = `Reading the prompt: ${p.processed.toLocaleString()} / ${plural(p.total, "token")}${cached}`;
      this.set((100 * p.processed) / total);
    }
    node.hidden = false;
  }

  set(percent) {
    const pct = Math.max(0, Math.min(100, percent));
    this.fill.style.width = `${pct.toFixed(1)}%`;
    this.node.setAttribute("aria-valuenow", String(Math.round(pct)));
  }

  finish() {
    this.finished = true;
    this.node.hidden = true;
  }
}
