// The llamaserve web UI: chat and completion modes over the server's OpenAI API.
// Plain ES modules, no build step, no network but this server. Model text reaches the page only
// through textContent or renderMarkdown (which escapes everything first).

import { getJson, isAbort, postStream, readChunks } from "./api.js";
import { Attachments, attachmentsNode } from "./attachments.js";
import { fork, newVersion, versionControls } from "./branches.js";
import { COMPLETION_KEY, COMPLETION_MAX_TOKENS, generate as generateCompletion, undo } from "./completion.js";
import { chatHistory, exportConversation } from "./conversations.js";
import { renderMarkdown } from "./markdown.js";
import { ProbabilityView } from "./probabilities.js";
import { PROGRESS_OPTION, PromptProgress } from "./progress.js";
import {
  $,
  el,
  formatStats,
  hideNotice,
  load,
  Meter,
  newId,
  samplingBody,
  showNotice,
  store,
  waitNotices,
} from "./util.js";

const KEYS = {
  conversations: "llamaserve.conversations.v1",
  current: "llamaserve.current.v1",
  settings: "llamaserve.settings.v1",
  apiKey: "llamaserve.apiKey.v1",
  mode: "llamaserve.mode.v1",
};
const NARROW = window.matchMedia("(max-width: 900px)");
const HEALTH_EVERY_MS = 4000;

const app = {
  conversations: load(KEYS.conversations, []),
  currentId: load(KEYS.current, null),
  settings: load(KEYS.settings, {}),
  apiKey: load(KEYS.apiKey, ""),
  mode: load(KEYS.mode, "chat"),
  model: { id: null, ctx: null },
  running: null, // {controller, kind} while a request is in flight
  afterKey: new Set(), // what to retry once the user gives an API key
  undoText: null,
  lastSaved: 0,
};
// Text files waiting in the composer for the next message.
const attachments = new Attachments({
  context: () => ({ ctx: app.model.ctx, used: current().usage?.total_tokens ?? 0, model: app.model.id }),
  apiKey: () => app.apiKey,
});

// ---- conversations ------------------------------------------------------------------------------

function current() {
  let conv = app.conversations.find((c) => c.id === app.currentId);
  if (!conv) {
    conv = app.conversations[0];
    if (!conv) {
      conv = { id: newId(), title: "New chat", system: "", messages: [], updated: Date.now() };
      app.conversations.unshift(conv);
    }
    app.currentId = conv.id;
  }
  return conv;
}

function persist() {
  app.lastSaved = performance.now();
  store(KEYS.conversations, app.conversations);
  store(KEYS.current, app.currentId);
}

function newConversation() {
  if (app.running) return;
  const conv = { id: newId(), title: "New chat", system: current().system || "", messages: [], updated: Date.now() };
  app.conversations.unshift(conv);
  app.currentId = conv.id;
  persist();
  renderChat();
  closeDrawers();
  $("chat-input").focus();
}

function selectConversation(id) {
  if (app.running || id === app.currentId) return;
  app.currentId = id;
  persist();
  renderChat();
  closeDrawers();
}

function deleteConversation(id) {
  if (app.running && id === app.currentId) return;
  app.conversations = app.conversations.filter((c) => c.id !== id);
  if (app.currentId === id) app.currentId = null;
  current();
  persist();
  renderChat();
}

function renderSidebar() {
  const list = $("conversation-list");
  list.replaceChildren();
  for (const conv of app.conversations) {
    const item = el("li", { class: conv.id === app.currentId ? "active" : "", testid: "conversation-item" });
    const open = el("button", { type: "button", class: "conv-title", testid: "conversation-title" }, conv.title);
    open.title = conv.title;
    open.addEventListener("click", () => selectConversation(conv.id));
    const rename = el("button", { type: "button", class: "icon-button small", testid: "rename-conversation" }, "✎");
    rename.setAttribute("aria-label", "Rename");
    rename.addEventListener("click", () => startRename(item, conv));
    const del = el("button", { type: "button", class: "icon-button small", testid: "delete-conversation" }, "×");
    del.setAttribute("aria-label", "Delete");
    del.addEventListener("click", () => {
      // Two clicks, so one slip never loses a conversation (and no blocking confirm() dialog).
      if (del.dataset.armed) {
        deleteConversation(conv.id);
        return;
      }
      del.dataset.armed = "1";
      del.textContent = "Delete?";
      del.classList.add("armed");
      setTimeout(() => {
        if (del.isConnected) {
          delete del.dataset.armed;
          del.textContent = "×";
          del.classList.remove("armed");
        }
      }, 4000);
    });
    item.append(open, rename, del);
    list.append(item);
  }
}

function startRename(item, conv) {
  const input = el("input", { type: "text", class: "rename-input", testid: "rename-input" });
  input.value = conv.title;
  item.replaceChildren(input);
  input.focus();
  input.select();
  let done = false;
  const finish = (commit) => {
    if (done) return;
    done = true;
    const title = input.value.trim();
    if (commit && title) {
      conv.title = title.slice(0, 120);
      persist();
    }
    renderSidebar();
  };
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter") finish(true);
    else if (e.key === "Escape") {
      e.stopPropagation();
      finish(false);
    }
  });
  input.addEventListener("blur", () => finish(true));
}

// ---- chat rendering -----------------------------------------------------------------------------

function messageNode(conv, msg, index) {
  const isLast = index === conv.messages.length - 1;
  const node = el("div", { class: `msg ${msg.role}`, testid: `message-${msg.role}` });
  node.append(el("div", { class: "msg-role" }, msg.role === "user" ? "You" : "Assistant"));
  const body = el("div", { class: msg.role === "user" ? "msg-body plain" : "msg-body markdown", testid: "message-body" });
  if (msg.role === "user") body.textContent = msg.content;
  else if (msg.content) body.innerHTML = renderMarkdown(msg.content);
  else if (!msg.error && !msg.stopped) body.append(el("span", { class: "typing", "aria-label": "waiting" }, "● ● ●"));
  node.append(body);
  const files = attachmentsNode(msg);
  if (files) node.append(files);
  if (msg.error) node.append(el("div", { class: "msg-error", testid: "message-error", role: "alert" }, msg.error));
  const meta = el("div", { class: "msg-meta" });
  const versions = versionControls(conv, index, { disabled: Boolean(app.running), onSwitch: afterSwitch });
  if (versions) meta.append(versions);
  if (msg.role === "assistant") {
    meta.append(el("span", { class: "stats", testid: "reply-stats" }, formatStats(msg.stats)));
    if (isLast && !app.running) {
      const regen = el("button", { type: "button", class: "link-button", testid: "regenerate" }, "Regenerate");
      regen.addEventListener("click", regenerate);
      meta.append(regen);
    }
  } else if (!app.running) {
    const edit = el("button", { type: "button", class: "link-button", testid: "edit-message" }, "Edit");
    edit.addEventListener("click", () => startEdit(node, conv, index));
    meta.append(edit);
  }
  node.append(meta);
  return node;
}

function afterSwitch() {
  persist();
  renderMessages();
}

function renderMessages() {
  const conv = current();
  const box = $("messages");
  box.replaceChildren();
  if (conv.messages.length === 0) {
    box.append(el("div", { class: "empty" }, "Start a conversation below. Replies stream as they are generated."));
  }
  conv.messages.forEach((msg, i) => box.append(messageNode(conv, msg, i)));
  box.scrollTop = box.scrollHeight;
  renderContext(conv);
}

function renderContext(conv) {
  const used = conv.usage?.total_tokens;
  let text = "";
  if (used !== undefined) {
    text = app.model.ctx ? `Context: ${used} / ${app.model.ctx} tokens` : `Context: ${used} tokens used`;
  } else if (app.model.ctx) {
    text = `Context: ${app.model.ctx} tokens per conversation`;
  }
  $("context-usage").textContent = text;
}

function renderChat() {
  const conv = current();
  $("system-prompt").value = conv.system || "";
  if (conv.system) $("system-box").open = true;
  renderSidebar();
  renderMessages();
}

function startEdit(node, conv, index) {
  const msg = conv.messages[index];
  const area = el("textarea", { class: "edit-area", testid: "edit-input", rows: "3" });
  area.value = msg.content;
  const save = el("button", { type: "button", class: "primary", testid: "edit-send" }, "Send");
  const cancel = el("button", { type: "button", testid: "edit-cancel" }, "Cancel");
  const bar = el("div", { class: "row" });
  bar.append(save, cancel);
  node.replaceChildren(el("div", { class: "msg-role" }, "You (editing)"), area, bar);
  area.focus();
  const send = () => {
    const text = area.value.trim();
    if (!text || app.running) return;
    // The old message and what followed it stay as the previous version.
    fork(conv, index);
    conv.messages.push(newVersion(msg, text));
    startReply(conv);
  };
  save.addEventListener("click", send);
  cancel.addEventListener("click", renderMessages);
  area.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      send();
    }
  });
}

// ---- chat requests ------------------------------------------------------------------------------

function sendFromComposer() {
  const input = $("chat-input");
  const text = input.value.trim();
  if ((!text && !attachments.pending.length) || app.running) return;
  const files = attachments.take();
  if (!files) return; // they no longer fit the context: the page said why
  const conv = current();
  conv.messages.push(files.length ? { role: "user", content: text, attachments: files } : { role: "user", content: text });
  if (conv.title === "New chat") conv.title = (text || files[0].name).replace(/\s+/g, " ").slice(0, 48);
  input.value = "";
  startReply(conv);
}

function regenerate() {
  const conv = current();
  if (app.running) return;
  const last = conv.messages.at(-1);
  // A real answer stays as the previous version; a failed or empty one is replaced.
  if (last?.role === "assistant") {
    if (last.content) fork(conv, conv.messages.length - 1);
    else conv.messages.pop();
  }
  if (conv.messages.at(-1)?.role !== "user") return;
  startReply(conv);
}

function startReply(conv) {
  const reply = { role: "assistant", content: "", stats: null };
  const messages = chatHistory(conv);
  conv.messages.push(reply);
  conv.updated = Date.now();
  // Newest conversation first in the sidebar.
  app.conversations = [conv, ...app.conversations.filter((c) => c !== conv)];
  persist();
  runChat(conv, reply, messages);
}

async function runChat(conv, reply, messages) {
  const controller = new AbortController();
  app.running = { controller, kind: "chat" };
  setRunning(true);
  renderChat();
  const box = $("messages");
  const node = box.lastElementChild;
  const body = node.querySelector(".msg-body");
  const stats = node.querySelector(".stats");
  const progress = new PromptProgress();
  body.before(progress.node);
  const meter = new Meter();
  let frame = 0;
  const paint = () => {
    frame = 0;
    const stick = box.scrollHeight - box.scrollTop - box.clientHeight < 80;
    body.innerHTML = renderMarkdown(reply.content);
    stats.textContent = formatStats(meter.stats());
    if (stick) box.scrollTop = box.scrollHeight;
    if (performance.now() - app.lastSaved > 1000) persist(); // a reload mid-reply keeps most of it
  };
  const request = {
    ...samplingBody(app.settings, app.model.id),
    messages,
    stream: true,
    stream_options: { include_usage: true, ...PROGRESS_OPTION },
  };
  if (app.settings.json) request.response_format = { type: "json_object" };
  let askKey = false;
  try {
    const response = await postStream("/v1/chat/completions", request, {
      apiKey: app.apiKey,
      signal: controller.signal,
      onWait: waitNotices(meter),
    });
    hideNotice();
    pollHealth();
    for await (const chunk of readChunks(response, { onComment: progress.onComment })) {
      const choice = chunk.choices?.[0];
      if (choice?.delta?.content) {
        progress.finish();
        meter.piece();
        reply.content += choice.delta.content;
        if (!frame) frame = requestAnimationFrame(paint);
      }
      if (choice?.finish_reason) reply.finish = choice.finish_reason;
      if (chunk.usage) meter.usage = chunk.usage;
    }
    if (reply.finish === "length") reply.stats_note = "stopped at max tokens";
  } catch (err) {
    if (isAbort(err)) {
      reply.stopped = true;
      hideNotice();
    } else if (err.status === 401) {
      askKey = true;
    } else {
      reply.error = err.message;
      hideNotice();
    }
  } finally {
    if (frame) cancelAnimationFrame(frame);
    progress.finish();
    app.running = null;
    setRunning(false);
    pollHealth();
  }
  if (askKey) {
    conv.messages.splice(conv.messages.indexOf(reply), 1);
    askForKey(regenerate);
  } else {
    reply.stats = meter.stats(reply.stopped ? "stopped" : reply.stats_note || "");
    delete reply.stats_note;
    if (meter.usage) conv.usage = reply.usage = meter.usage;
  }
  conv.updated = Date.now();
  persist();
  if (app.currentId === conv.id) renderChat();
}

function stopRunning() {
  if (app.running) app.running.controller.abort();
}

function setRunning(on) {
  $("send").hidden = on;
  $("stop").hidden = !on;
  $("generate").hidden = on;
  $("completion-stop").hidden = !on;
  $("completion-text").readOnly = on;
  $("new-chat").disabled = on;
  $("undo").disabled = on || app.undoText === null;
  document.body.classList.toggle("running", on);
}

// ---- completion mode ----------------------------------------------------------------------------

// What completion.js may do to the page around it.
const completionUi = {
  setRunning: (on) => setRunning(on),
  pollHealth: () => pollHealth(),
  askForKey: (retry) => askForKey(retry),
  generate: () => generate(),
  probabilities: null, // set in init()
};

function generate(opts) {
  return generateCompletion(app, completionUi, opts);
}

// ---- API key ------------------------------------------------------------------------------------

function askForKey(retry) {
  app.afterKey.add(retry);
  hideNotice();
  const form = $("apikey-prompt");
  form.hidden = false;
  $("apikey-input").value = "";
  $("apikey-input").focus();
}

function setApiKey(key) {
  app.apiKey = key;
  store(KEYS.apiKey, key);
  $("setting-api-key").value = key;
}

// ---- models and server status -------------------------------------------------------------------

async function loadModels() {
  const select = $("setting-model");
  try {
    const list = await getJson("/v1/models", { apiKey: app.apiKey });
    select.replaceChildren();
    for (const m of list.data || []) {
      const option = el("option", { value: m.id }, m.id);
      select.append(option);
    }
    const saved = app.settings.model;
    const ids = (list.data || []).map((m) => m.id);
    select.value = ids.includes(saved) ? saved : ids[0] || "";
    const model = (list.data || []).find((m) => m.id === select.value);
    app.model = { id: select.value || null, ctx: contextOf(model) ?? app.model.ctx };
    renderContext(current());
  } catch (err) {
    if (err.status === 401) askForKey(loadModels);
    else if (err.status === 503) setTimeout(loadModels, 2000); // still loading the model
    else showNotice(`Could not list models: ${err.message}`, "error");
  }
}

function contextOf(model) {
  if (!model) return null;
  const n = model.context_length ?? model.n_ctx ?? model.meta?.n_ctx ?? model.meta?.n_ctx_per_seq;
  return Number.isFinite(n) ? n : null;
}

async function pollHealth() {
  const status = $("server-status");
  try {
    const response = await fetch("/health", { cache: "no-store" });
    const h = await response.json();
    if (h.status === "ok") {
      const busy = h.slots_total ? `${h.slots_busy}/${h.slots_total} slots busy` : "ready";
      const waiting = h.requests_waiting ? ` · ${h.requests_waiting} waiting` : "";
      status.textContent = `ready · ${busy}${waiting}`;
      status.dataset.state = h.slots_busy >= h.slots_total ? "busy" : "ok";
      const ctx = h.n_ctx_per_seq ?? h.n_ctx;
      if (Number.isFinite(ctx) && !app.model.ctx) {
        app.model.ctx = ctx;
        renderContext(current());
      }
    } else {
      status.textContent = h.status === "loading" ? "loading model…" : `server ${h.status}`;
      status.dataset.state = "wait";
    }
  } catch {
    status.textContent = "server unreachable";
    status.dataset.state = "down";
  }
}

// ---- layout -------------------------------------------------------------------------------------

function setMode(mode) {
  app.mode = mode === "completion" ? "completion" : "chat";
  store(KEYS.mode, app.mode);
  const chat = app.mode === "chat";
  $("chat-view").hidden = !chat;
  $("completion-view").hidden = chat;
  $("mode-chat").setAttribute("aria-pressed", String(chat));
  $("mode-completion").setAttribute("aria-pressed", String(!chat));
  document.body.dataset.mode = app.mode;
  $("setting-max_tokens").placeholder = chat ? "until done" : String(COMPLETION_MAX_TOKENS);
}

function togglePanel(id) {
  // Wide screens collapse a docked panel; narrow screens slide it over the page.
  const panel = $(id);
  if (NARROW.matches) {
    const open = !panel.classList.contains("open");
    closeDrawers();
    panel.classList.toggle("open", open);
  } else {
    panel.classList.toggle("collapsed");
  }
}

function closeDrawers() {
  $("sidebar").classList.remove("open");
  $("settings").classList.remove("open");
}

async function copyCode(button) {
  const code = button.closest(".code-block")?.querySelector("code")?.textContent ?? "";
  try {
    await navigator.clipboard.writeText(code);
  } catch {
    // Clipboard API refused (permissions): select the text so Ctrl+C works.
    const range = document.createRange();
    range.selectNodeContents(button.closest(".code-block").querySelector("code"));
    getSelection().removeAllRanges();
    getSelection().addRange(range);
    button.textContent = "Press Ctrl+C";
    return;
  }
  button.textContent = "Copied";
  setTimeout(() => {
    button.textContent = "Copy";
  }, 1500);
}

// ---- wiring -------------------------------------------------------------------------------------

function wireSettings() {
  const inputs = document.querySelectorAll("#settings input[data-key]");
  for (const input of inputs) {
    input.value = app.settings[input.dataset.key] ?? "";
    input.addEventListener("input", () => {
      app.settings[input.dataset.key] = input.value;
      store(KEYS.settings, app.settings);
    });
  }
  const stop = $("setting-stop");
  stop.value = app.settings.stop ?? "";
  stop.addEventListener("input", () => {
    app.settings.stop = stop.value;
    store(KEYS.settings, app.settings);
  });
  const json = $("setting-json");
  json.checked = Boolean(app.settings.json);
  json.addEventListener("change", () => {
    app.settings.json = json.checked;
    store(KEYS.settings, app.settings);
  });
  $("setting-model").addEventListener("change", (e) => {
    app.settings.model = e.target.value;
    app.model.id = e.target.value || null;
    store(KEYS.settings, app.settings);
  });
  const key = $("setting-api-key");
  key.value = app.apiKey;
  key.addEventListener("change", () => setApiKey(key.value.trim()));
  $("reset-settings").addEventListener("click", () => {
    const model = app.settings.model;
    app.settings = model ? { model } : {};
    store(KEYS.settings, app.settings);
    for (const input of inputs) input.value = "";
    stop.value = "";
    json.checked = false;
  });
}

function wire() {
  $("mode-chat").addEventListener("click", () => setMode("chat"));
  $("mode-completion").addEventListener("click", () => setMode("completion"));
  $("toggle-sidebar").addEventListener("click", () => togglePanel("sidebar"));
  $("toggle-settings").addEventListener("click", () => togglePanel("settings"));
  $("new-chat").addEventListener("click", newConversation);
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    sendFromComposer();
  });
  $("chat-input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      sendFromComposer();
    }
  });
  $("stop").addEventListener("click", stopRunning);
  $("completion-stop").addEventListener("click", stopRunning);
  $("system-prompt").addEventListener("input", (e) => {
    current().system = e.target.value;
    persist();
  });
  $("messages").addEventListener("click", (e) => {
    const button = e.target.closest("button.copy-code");
    if (button) copyCode(button);
  });
  $("export-json").addEventListener("click", () => exportConversation(current(), "json", app.model.id));
  $("export-md").addEventListener("click", () => exportConversation(current(), "markdown", app.model.id));
  $("generate").addEventListener("click", () => generate());
  $("undo").addEventListener("click", () => {
    undo(app);
    completionUi.probabilities.restore();
  });
  const area = $("completion-text");
  area.value = load(COMPLETION_KEY, "");
  area.addEventListener("input", () => store(COMPLETION_KEY, area.value));
  area.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      generate();
    }
  });
  $("apikey-prompt").addEventListener("submit", (e) => {
    e.preventDefault();
    const key = $("apikey-input").value.trim();
    if (!key) return;
    setApiKey(key);
    $("apikey-prompt").hidden = true;
    const retries = [...app.afterKey].filter((fn) => fn !== loadModels);
    app.afterKey.clear();
    loadModels();
    for (const retry of retries) retry();
  });
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape") {
      if (app.running) stopRunning();
      else closeDrawers();
    }
  });
  NARROW.addEventListener("change", closeDrawers);
}

function init() {
  wire();
  attachments.wire();
  completionUi.probabilities = new ProbabilityView(app, { generate });
  completionUi.probabilities.wire();
  wireSettings();
  setMode(app.mode);
  renderChat();
  setRunning(false);
  loadModels();
  pollHealth();
  setInterval(() => {
    if (!document.hidden) pollHealth();
  }, HEALTH_EVERY_MS);
  if (app.mode === "chat") $("chat-input").focus();
}

init();
