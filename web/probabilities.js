// Completion mode's probability view: each generated token tinted by its probability, its top
// alternatives on hover, tap or keyboard, and "continue from this alternative instead".
//
// The text area stays the one source of the text; this module keeps, beside it, which stretches of
// that text are tokens the model generated (with their logprobs from /v1/completions). The token
// view shows the same text as spans, so it can be swapped in for the text area and back.

import { $, el, load, store } from "./util.js";

export const TOP_N = 10; // alternatives asked for per token (the server allows up to 10)
const SEGMENTS_KEY = "llamaserve.completion-tokens.v1";
const ENABLED_KEY = "llamaserve.show-probabilities.v1";
const BANDS = [0.1, 0.3, 0.5, 0.8]; // tint steps: <10%, <30%, <50%, <80%, the rest
const HOVER_CLOSE_MS = 250;
const SAVE_AFTER_MS = 400;
const MAX_KEPT_TOKENS = 3000; // older tokens are kept as plain text, so localStorage stays small

export function percent(logprob) {
  const p = Math.exp(logprob);
  if (p < 0.001) return "<0.1%";
  return `${(p * 100).toFixed(1)}%`;
}

function band(logprob) {
  const p = Math.exp(logprob);
  const i = BANDS.findIndex((edge) => p < edge);
  return String(i < 0 ? BANDS.length : i);
}

// Whitespace made visible, for a token shown on its own.
export function visible(text) {
  if (text === "") return "∅";
  return text.replace(/ /g, "␣").replace(/\n/g, "↵").replace(/\t/g, "⇥");
}

const textOf = (segments) => segments.map((s) => s.text).join("");
const isToken = (s) => s.logprob !== undefined;

// The segments that still match `text` from its start, and the rest of it as plain text.
export function resync(segments, text) {
  const kept = [];
  let at = 0;
  for (const seg of segments) {
    if (!text.startsWith(seg.text, at) || seg.text === "") break;
    kept.push(seg);
    at += seg.text.length;
  }
  if (at < text.length) kept.push({ text: text.slice(at) });
  return kept;
}

// One stream chunk's logprob entries: [{token, logprob, top: [{text, logprob}] best first}].
function entriesOf(choice) {
  const lp = choice.logprobs;
  if (!lp || !Array.isArray(lp.tokens)) return [];
  return lp.tokens.map((token, i) => {
    const top = Object.entries(lp.top_logprobs?.[i] ?? {}).map(([text, logprob]) => ({ text, logprob }));
    top.sort((a, b) => b.logprob - a.logprob);
    return { token, logprob: lp.token_logprobs?.[i] ?? 0, top };
  });
}

export class ProbabilityView {
  // `app` is the page's state (running, its controller); `generate(opts)` starts a completion.
  constructor(app, { generate }) {
    this.app = app;
    this.generate = generate;
    this.topN = TOP_N;
    this.enabled = Boolean(load(ENABLED_KEY, false));
    const saved = load(SEGMENTS_KEY, []);
    this.segments = Array.isArray(saved) ? saved.filter((s) => typeof s?.text === "string") : [];
    this.pending = []; // logprob entries whose text the stream has not released yet
    this.undoSnapshot = null; // {text, segments} from before the last generation
    this.editing = false; // the user asked for the text area back
    this.popover = null; // {node, index, pinned}
    this.closeTimer = 0;
    this.saveTimer = 0;
    this.view = $("completion-tokens");
    this.area = $("completion-text");
  }

  wire() {
    const toggle = $("show-probabilities");
    toggle.checked = this.enabled;
    toggle.addEventListener("change", () => {
      this.enabled = toggle.checked;
      store(ENABLED_KEY, this.enabled);
      this.editing = false;
      this.render();
    });
    $("edit-text").addEventListener("click", () => {
      this.editing = true;
      this.render();
      this.area.focus();
    });
    this.area.addEventListener("input", () => this.sync());
    this.view.addEventListener("mouseover", (e) => {
      const tok = e.target.closest?.(".tok");
      if (tok && !this.popover?.pinned) this.open(Number(tok.dataset.index), false);
    });
    this.view.addEventListener("mouseout", (e) => {
      if (e.target.closest?.(".tok") && !this.popover?.pinned) this.closeSoon();
    });
    this.view.addEventListener("click", (e) => {
      const tok = e.target.closest(".tok");
      if (tok) this.open(Number(tok.dataset.index), true);
    });
    this.view.addEventListener("keydown", (e) => this.onTokenKey(e));
    this.view.addEventListener("scroll", () => this.place());
    window.addEventListener("resize", () => this.place());
    window.addEventListener("pagehide", () => this.save()); // typing that had not been saved yet
    document.addEventListener("pointerdown", (e) => {
      if (this.popover?.pinned && !e.target.closest(".tok, .token-popover")) this.close();
    });
    this.sync();
  }

  // ---- the text and its tokens ----------------------------------------------------------------

  sync() {
    this.segments = resync(this.segments, this.area.value);
    this.saveSoon();
    this.render();
  }

  // Kept up to the last token: the text after it is the text area's, stored already.
  save() {
    clearTimeout(this.saveTimer);
    let extra = this.segments.filter(isToken).length - MAX_KEPT_TOKENS;
    if (extra > 0) {
      this.segments = this.segments.map((s) => (isToken(s) && extra-- > 0 ? { text: s.text } : s));
    }
    const last = this.segments.findLastIndex(isToken);
    store(SEGMENTS_KEY, this.segments.slice(0, last + 1));
  }

  // Typing saves once it pauses, not on every key.
  saveSoon() {
    clearTimeout(this.saveTimer);
    this.saveTimer = setTimeout(() => this.save(), SAVE_AFTER_MS);
  }

  // A generation starts from `text` (the whole prompt). `keepUndo`: the caller saved its own undo.
  begin(text, keepUndo = false) {
    this.segments = resync(this.segments, text);
    if (!keepUndo) this.undoSnapshot = { text, segments: this.segments.slice() };
    this.pending = [];
    this.editing = false;
    this.close();
    this.render();
  }

  // One streamed choice: its text joins the last segments, as tokens where the logprobs say so.
  add(choice) {
    if (!choice) return;
    this.pending.push(...entriesOf(choice));
    const text = choice.text || "";
    if (!text) return; // the token's text is held back (part of a UTF-8 character, a possible stop)
    const entries = this.pending;
    this.pending = [];
    let added;
    if (entries.length === 0) added = [{ text }];
    else if (entries.map((e) => e.token).join("") === text) {
      added = entries.map((e) => ({ text: e.token, logprob: e.logprob, top: e.top }));
    } else {
      // Several tokens made one piece of text (a multi-byte character): the piece is shown as the
      // first of them, whose alternatives replace it from its start.
      added = [{ text, logprob: entries[0].logprob, top: entries[0].top }];
    }
    const stick = this.view.scrollHeight - this.view.scrollTop - this.view.clientHeight < 80;
    const wasShown = this.shown();
    for (const seg of added) {
      this.segments.push(seg);
      if (wasShown) this.view.append(this.segmentNode(seg, this.segments.length - 1));
    }
    if (!wasShown) this.render(); // the first token: the view takes the text area's place
    if (!this.shown()) return;
    this.ensureTabStop();
    if (stick) this.view.scrollTop = this.view.scrollHeight;
  }

  end() {
    this.pending = [];
    this.segments = resync(this.segments, this.area.value);
    this.save();
    this.render();
  }

  // After Undo put the old text back: the tokens of that text come back with it.
  restore() {
    const snap = this.undoSnapshot;
    this.undoSnapshot = null;
    this.segments = resync(snap && snap.text === this.area.value ? snap.segments : this.segments, this.area.value);
    this.close();
    this.save();
    this.render();
  }

  // Replace token `index` by an alternative, drop what followed, and continue from there.
  async pick(index, alt) {
    const seg = this.segments[index];
    if (!seg || !isToken(seg)) return;
    if (this.app.running) {
      if (this.app.running.kind !== "completion") return; // a chat reply is streaming: leave it be
      this.app.running.controller.abort();
      while (this.app.running) await new Promise((r) => setTimeout(r, 20));
    }
    const before = this.area.value;
    this.undoSnapshot = { text: before, segments: this.segments.slice() };
    this.segments = [...this.segments.slice(0, index), { text: alt.text, logprob: alt.logprob, top: seg.top }];
    this.area.value = textOf(this.segments);
    this.close();
    await this.generate({ undoText: before });
  }

  // ---- rendering ------------------------------------------------------------------------------

  shown() {
    return this.enabled && !this.editing && this.segments.some(isToken);
  }

  render() {
    const shown = this.shown();
    this.view.hidden = !shown;
    this.area.hidden = shown;
    $("edit-text").hidden = !shown;
    $("probability-legend").hidden = !this.enabled;
    if (!shown) {
      this.close();
      this.view.replaceChildren();
      return;
    }
    const focused = document.activeElement?.closest?.(".tok")?.dataset.index;
    this.view.replaceChildren(...this.segments.map((seg, i) => this.segmentNode(seg, i)));
    this.ensureTabStop();
    if (focused !== undefined) this.tokenNode(Number(focused))?.focus();
  }

  // One token is in the page's tab order (roving tabindex); arrows move between the others.
  ensureTabStop() {
    if (this.view.querySelector('.tok[tabindex="0"]')) return;
    const first = this.view.querySelector(".tok");
    if (first) first.tabIndex = 0;
  }

  segmentNode(seg, index) {
    if (!isToken(seg)) return el("span", { class: "plain" }, seg.text);
    const node = el("span", { class: "tok", testid: "token", role: "button", "aria-haspopup": "listbox" }, seg.text);
    node.tabIndex = -1;
    node.dataset.index = String(index);
    node.dataset.band = band(seg.logprob);
    node.dataset.prob = Math.exp(seg.logprob).toFixed(4);
    node.setAttribute("aria-label", `${visible(seg.text)} ${percent(seg.logprob)}`);
    return node;
  }

  tokenNode(index) {
    return this.view.querySelector(`.tok[data-index="${index}"]`);
  }

  // ---- the alternatives popover ---------------------------------------------------------------

  open(index, pinned) {
    clearTimeout(this.closeTimer);
    const seg = this.segments[index];
    const tok = this.tokenNode(index);
    if (!seg || !isToken(seg) || !tok) return;
    if (this.popover?.index === index) {
      this.popover.pinned ||= pinned;
      return;
    }
    this.close();
    const node = el("div", { class: "token-popover", testid: "token-popover", role: "listbox" });
    node.setAttribute("aria-label", `Alternatives for ${visible(seg.text)}`);
    const head = el("div", { class: "pop-head" });
    head.append(el("code", {}, visible(seg.text)), el("span", { class: "pop-p" }, percent(seg.logprob)));
    node.append(head);
    const alts = seg.top.length ? seg.top : [{ text: seg.text, logprob: seg.logprob }];
    alts.forEach((alt, i) => {
      const button = el("button", { type: "button", class: "alt", testid: "token-alternative", role: "option" });
      button.dataset.band = band(alt.logprob);
      button.dataset.text = alt.text;
      button.setAttribute("aria-selected", String(alt.text === seg.text));
      const meter = el("span", { class: "alt-meter" });
      const fill = el("span", { class: "alt-fill" });
      fill.style.width = `${Math.max(1, Math.round(Math.exp(alt.logprob) * 100))}%`; // CSSOM: allowed by the CSP
      meter.append(fill);
      button.append(el("code", {}, visible(alt.text)), meter, el("span", { class: "alt-p" }, percent(alt.logprob)));
      // An end-of-text token, or part of a character (a UTF-8 fragment), gives no text to continue from.
      if (alt.text === "" || alt.text.includes("\ufffd")) button.disabled = true;
      button.addEventListener("click", () => this.pick(index, alt));
      button.addEventListener("keydown", (e) => this.onAltKey(e, i));
      node.append(button);
    });
    node.append(el("div", { class: "hint" }, "Pick one to continue from it; Undo goes back."));
    node.addEventListener("mouseenter", () => clearTimeout(this.closeTimer));
    node.addEventListener("mouseleave", () => {
      if (!this.popover?.pinned) this.closeSoon();
    });
    $("completion-stage").append(node);
    tok.classList.add("open");
    tok.setAttribute("aria-expanded", "true");
    this.popover = { node, index, pinned };
    this.place();
  }

  place() {
    if (!this.popover) return;
    const tok = this.tokenNode(this.popover.index);
    if (!tok) {
      this.close();
      return;
    }
    const stage = $("completion-stage").getBoundingClientRect();
    const r = tok.getBoundingClientRect();
    const pop = this.popover.node;
    const width = pop.offsetWidth;
    const left = Math.min(Math.max(0, r.left - stage.left), Math.max(0, stage.width - width));
    let top = r.bottom - stage.top + 4;
    if (top + pop.offsetHeight > stage.height && r.top - stage.top > pop.offsetHeight + 4) {
      top = r.top - stage.top - pop.offsetHeight - 4; // no room below: above the token
    }
    pop.style.left = `${left}px`;
    pop.style.top = `${top}px`;
  }

  closeSoon() {
    clearTimeout(this.closeTimer);
    this.closeTimer = setTimeout(() => this.close(), HOVER_CLOSE_MS);
  }

  close() {
    clearTimeout(this.closeTimer);
    if (!this.popover) return;
    const tok = this.tokenNode(this.popover.index);
    tok?.classList.remove("open");
    tok?.removeAttribute("aria-expanded");
    this.popover.node.remove();
    this.popover = null;
  }

  // ---- keyboard -------------------------------------------------------------------------------

  onTokenKey(e) {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      this.generate(); // Ctrl+Enter continues the text, as in the text area
      return;
    }
    const tok = e.target.closest(".tok");
    if (!tok) return;
    const tokens = [...this.view.querySelectorAll(".tok")];
    const at = tokens.indexOf(tok);
    const moves = { ArrowRight: at + 1, ArrowDown: at + 1, ArrowLeft: at - 1, ArrowUp: at - 1, Home: 0, End: tokens.length - 1 };
    if (e.key in moves) {
      e.preventDefault();
      const next = tokens[Math.min(Math.max(moves[e.key], 0), tokens.length - 1)];
      tok.tabIndex = -1;
      next.tabIndex = 0;
      next.focus();
      if (this.popover) this.open(Number(next.dataset.index), this.popover.pinned);
    } else if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      this.open(Number(tok.dataset.index), true);
      this.popover?.node.querySelector(".alt")?.focus();
    } else if (e.key === "Escape" && this.popover) {
      e.stopPropagation(); // close the popover, not stop the generation
      this.close();
    }
  }

  onAltKey(e, i) {
    const alts = [...this.popover.node.querySelectorAll(".alt")];
    if (e.key === "ArrowDown" || e.key === "ArrowUp") {
      e.preventDefault();
      alts[(i + (e.key === "ArrowDown" ? 1 : alts.length - 1)) % alts.length].focus();
    } else if (e.key === "Escape") {
      e.stopPropagation();
      const index = this.popover.index;
      this.close();
      this.tokenNode(index)?.focus();
    }
  }
}
