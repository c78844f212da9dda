// Branching chats: editing a message or regenerating an answer keeps the old version beside the new.
//
// conv.messages stays the branch on screen, so what is sent, exported and shown reads it as before,
// and conversations saved before branching load unchanged. The other versions wait where they fork:
// the message before the fork (the conversation itself, for the first message) holds
// `forks = {versions, at}`, one entry per version: that version's messages from the fork on, or
// null for the one on screen (`at`). A version's own later forks live in its messages, so they
// travel with it.

import { el } from "./util.js";

function holder(conv, index) {
  return index === 0 ? conv : conv.messages[index - 1];
}

// Sets the messages from `index` on aside as a version; the caller then adds the new version's.
export function fork(conv, index) {
  const h = holder(conv, index);
  if (!h) return;
  const tail = conv.messages.splice(index);
  if (tail.length === 0) return;
  if (!h.forks) h.forks = { versions: [null], at: 0 };
  h.forks.versions[h.forks.at] = tail;
  h.forks.versions.push(null);
  h.forks.at = h.forks.versions.length - 1;
}

// A message's new version: its text replaced; the old one's forks stay with the old one.
export function newVersion(msg, content) {
  const { forks: _forks, ...rest } = msg;
  return { ...rest, content };
}

// Where the message at `index` stands among its versions: {at, count}, or null if it has none.
export function versionsAt(conv, index) {
  const f = holder(conv, index)?.forks;
  return f && f.versions.length > 1 ? { at: f.at, count: f.versions.length } : null;
}

// Shows the version `step` away (-1 previous, +1 next) from the message at `index` on.
export function switchVersion(conv, index, step) {
  const f = holder(conv, index)?.forks;
  const to = f ? f.at + step : -1;
  if (!f || to < 0 || to >= f.versions.length || !f.versions[to]) return false;
  f.versions[f.at] = conv.messages.splice(index);
  conv.messages.push(...f.versions[to]);
  f.versions[to] = null;
  f.at = to;
  // The context use shown is the branch's own: its last reply's.
  conv.usage = conv.messages.findLast((m) => m.usage)?.usage;
  return true;
}

// `< 2/3 >` for the message at `index`, or null when it has one version.
export function versionControls(conv, index, { disabled, onSwitch }) {
  const where = versionsAt(conv, index);
  if (!where) return null;
  const box = el("span", { class: "branch", testid: "branch", role: "group", "aria-label": "Versions" });
  const prev = el("button", { type: "button", class: "icon-button small", testid: "branch-prev" }, "‹");
  prev.setAttribute("aria-label", "Previous version");
  prev.disabled = disabled || where.at === 0;
  const next = el("button", { type: "button", class: "icon-button small", testid: "branch-next" }, "›");
  next.setAttribute("aria-label", "Next version");
  next.disabled = disabled || where.at === where.count - 1;
  const label = el("span", { class: "branch-position", testid: "branch-position" }, `${where.at + 1}/${where.count}`);
  for (const [button, step] of [
    [prev, -1],
    [next, 1],
  ]) {
    button.addEventListener("click", () => {
      if (switchVersion(conv, index, step)) onSwitch();
    });
  }
  box.append(prev, label, next);
  return box;
}
