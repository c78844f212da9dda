// Text attachments in chat: a picked or dropped text file rides with the next message as a text
// content part that names it. Its token cost is counted by the server (/tokenize) before sending,
// and a file that would not fit what is left of the context is refused there and then.

import { $, el, showNotice } from "./util.js";

export const MAX_BYTES = 256 * 1024;
export const ACCEPT =
  ".txt,.md,.markdown,.rst,.csv,.tsv,.json,.jsonl,.yaml,.yml,.toml,.ini,.xml,.html,.css,.log," +
  ".py,.js,.mjs,.ts,.tsx,.jsx,.c,.h,.cc,.cpp,.hpp,.rs,.go,.java,.kt,.rb,.php,.sh,.sql,.swift,.lua,.r,.tex";

export function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

// The text the model reads for one file: its name, then its text in a fence longer than any run of
// backticks inside it (so the file cannot close the fence early).
export function attachmentText(a) {
  const longest = Math.max(0, ...(a.text.match(/`+/g) || []).map((run) => run.length));
  const fence = "`".repeat(Math.max(3, longest + 1));
  return `File: ${a.name}\n${fence}\n${a.text}\n${fence}\n\n`;
}

// A user message as the API takes it: a string, or text parts (files first, then what was typed).
export function messageContent(m) {
  if (!m.attachments?.length) return m.content;
  const parts = m.attachments.map((a) => ({ type: "text", text: attachmentText(a) }));
  if (m.content) parts.push({ type: "text", text: m.content });
  return parts;
}

// The files of a sent message, shown under it: each folds open to its text.
export function attachmentsNode(m) {
  if (!m.attachments?.length) return null;
  const box = el("div", { class: "msg-attachments" });
  for (const a of m.attachments) {
    const item = el("details", { class: "attachment", testid: "message-attachment" });
    item.append(el("summary", {}, `${a.name} · ${formatBytes(a.size)} · ${a.tokens} tokens`), el("pre", {}, a.text));
    box.append(item);
  }
  return box;
}

class Refused extends Error {}

async function readText(file) {
  if (file.size > MAX_BYTES) {
    throw new Refused(`${file.name} is ${formatBytes(file.size)}; a text attachment can be at most ${formatBytes(MAX_BYTES)}.`);
  }
  let text;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(await file.arrayBuffer());
  } catch {
    throw new Refused(`${file.name} is not a UTF-8 text file.`);
  }
  if (text.includes("\u0000")) throw new Refused(`${file.name} looks binary, not text.`);
  return text.replace(/\r\n?/g, "\n");
}

export class Attachments {
  // context() -> {ctx, used, model}: the context size, the tokens the conversation already uses,
  // and the model; apiKey() -> the key to send.
  constructor({ context, apiKey }) {
    this.context = context;
    this.apiKey = apiKey;
    this.pending = []; // [{name, size, text, tokens}] for the next message
  }

  wire() {
    const input = $("attach-input");
    input.accept = ACCEPT;
    const hint = `Attach a text file (txt, md, code, csv, json; up to ${formatBytes(MAX_BYTES)})`;
    $("attach").title = hint;
    $("attach").setAttribute("aria-label", hint);
    $("drop-hint").textContent = `Drop a text file here (up to ${formatBytes(MAX_BYTES)})`;
    $("attach").addEventListener("click", () => input.click());
    input.addEventListener("change", async () => {
      await this.addFiles([...input.files]);
      input.value = "";
    });
    const zone = $("composer");
    const hasFiles = (e) => [...(e.dataTransfer?.types || [])].includes("Files");
    zone.addEventListener("dragover", (e) => {
      if (!hasFiles(e)) return;
      e.preventDefault();
      zone.classList.add("dropping");
    });
    zone.addEventListener("dragleave", (e) => {
      if (!zone.contains(e.relatedTarget)) zone.classList.remove("dropping");
    });
    zone.addEventListener("drop", (e) => {
      zone.classList.remove("dropping");
      if (!hasFiles(e)) return;
      e.preventDefault();
      this.addFiles([...e.dataTransfer.files]);
    });
    this.render();
  }

  async addFiles(files) {
    for (const file of files) {
      try {
        const a = { name: file.name, size: file.size, text: await readText(file), tokens: 0 };
        a.tokens = await this.count(attachmentText(a));
        const refusal = this.refusal(a.tokens, a.name);
        if (refusal) throw new Refused(refusal);
        this.pending.push(a);
      } catch (err) {
        showNotice(err.message, "error");
      }
      this.render();
    }
  }

  async count(text) {
    const headers = { "Content-Type": "application/json" };
    if (this.apiKey()) headers.Authorization = `Bearer ${this.apiKey()}`;
    const body = { content: text, add_special: false };
    if (this.context().model) body.model = this.context().model;
    let response;
    try {
      response = await fetch("/tokenize", { method: "POST", headers, body: JSON.stringify(body), cache: "no-store" });
    } catch {
      throw new Refused("Cannot reach the server to count the file's tokens.");
    }
    const data = await response.json().catch(() => ({}));
    if (!response.ok) throw new Refused(`Could not count the file's tokens: ${data.error?.message || response.status}`);
    return data.tokens.length;
  }

  // Why `tokens` more would not fit (null if they would), next to the `others` already attached.
  refusal(tokens, name, others = this.pending) {
    const { ctx, used } = this.context();
    if (!ctx) return null;
    const left = Math.max(0, ctx - used - others.reduce((sum, a) => sum + a.tokens, 0));
    if (tokens < left) return null;
    return `${name} needs ${tokens} tokens, but only ${left} of the context's ${ctx} are left. Start a new chat or attach less.`;
  }

  // The files for the message being sent (the composer lets go of them), or null if they no longer
  // fit: the conversation grew since they were attached.
  take() {
    const files = this.pending;
    const total = files.reduce((sum, a) => sum + a.tokens, 0);
    const refusal = files.length ? this.refusal(total, "The attached files", []) : null;
    if (refusal) {
      showNotice(refusal, "error");
      return null;
    }
    this.pending = [];
    this.render();
    return files;
  }

  render() {
    const box = $("attachments");
    box.replaceChildren();
    box.hidden = this.pending.length === 0;
    this.pending.forEach((a, i) => {
      const chip = el("span", { class: "chip", testid: "attachment" });
      chip.append(el("span", { class: "chip-name" }, a.name));
      chip.append(el("span", { class: "chip-meta", testid: "attachment-tokens" }, `${formatBytes(a.size)} · ${a.tokens} tokens`));
      const remove = el("button", { type: "button", class: "icon-button small", testid: "attachment-remove" }, "×");
      remove.setAttribute("aria-label", `Remove ${a.name}`);
      remove.addEventListener("click", () => {
        this.pending.splice(i, 1);
        this.render();
      });
      chip.append(remove);
      box.append(chip);
    });
    if (this.pending.length) box.append(el("span", { class: "hint" }, `up to ${formatBytes(MAX_BYTES)} per file`));
  }
}
