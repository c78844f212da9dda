// Completion mode: the model continues the text area's text in place (POST /v1/completions).

import { isAbort, postStream, readChunks } from "./api.js";
import { PROGRESS_OPTION, PromptProgress } from "./progress.js";
import { $, formatStats, hideNotice, Meter, samplingBody, showNotice, store, waitNotices } from "./util.js";

// OpenAI's legacy default is 16 tokens, too short to be useful here.
export const COMPLETION_MAX_TOKENS = 256;
export const COMPLETION_KEY = "llamaserve.completion.v1";

// `ui` is what the page lends this mode: setRunning(on), pollHealth(), askForKey(retry), generate,
// and probabilities (the token view, which asks for logprobs while it is on).
// `undoText`: what Undo restores, when it is not the text the generation starts from.
export async function generate(app, ui, { undoText } = {}) {
  if (app.running) return;
  const area = $("completion-text");
  const before = area.value;
  if (!before) {
    showNotice("Write the start of a text first; Generate continues it.", "info");
    return;
  }
  app.undoText = undoText ?? before;
  const probs = ui.probabilities?.enabled ? ui.probabilities : null;
  const controller = new AbortController();
  app.running = { controller, kind: "completion" };
  ui.setRunning(true);
  hideNotice();
  const meter = new Meter();
  const statsEl = $("completion-stats");
  statsEl.textContent = "";
  const request = {
    ...samplingBody(app.settings, app.model.id),
    prompt: before,
    stream: true,
    stream_options: { include_usage: true, ...PROGRESS_OPTION },
  };
  request.max_tokens ??= COMPLETION_MAX_TOKENS;
  if (probs) request.logprobs = probs.topN;
  probs?.begin(before, undoText !== undefined);
  let note = "";
  let askKey = false;
  const progress = new PromptProgress();
  area.after(progress.node);
  try {
    const response = await postStream("/v1/completions", request, {
      apiKey: app.apiKey,
      signal: controller.signal,
      onWait: waitNotices(meter),
    });
    hideNotice();
    for await (const chunk of readChunks(response, { onComment: progress.onComment })) {
      const choice = chunk.choices?.[0];
      if (choice?.text) {
        progress.finish();
        meter.piece();
        const stick = area.scrollHeight - area.scrollTop - area.clientHeight < 80;
        area.value += choice.text;
        if (stick) area.scrollTop = area.scrollHeight;
        statsEl.textContent = formatStats(meter.stats());
      }
      probs?.add(choice);
      if (choice?.finish_reason === "length") note = "stopped at max tokens";
      if (chunk.usage) meter.usage = chunk.usage;
    }
  } catch (err) {
    if (isAbort(err)) {
      note = "stopped";
      hideNotice();
    } else if (err.status === 401) {
      askKey = true;
    } else {
      showNotice(err.message, "error");
    }
  } finally {
    progress.node.remove();
    app.running = null;
    ui.setRunning(false);
    ui.pollHealth();
    probs?.end();
  }
  store(COMPLETION_KEY, area.value);
  if (askKey) {
    app.undoText = null;
    ui.setRunning(false);
    ui.askForKey(ui.generate);
    return;
  }
  statsEl.textContent = formatStats(meter.stats(note));
}

export function undo(app) {
  if (app.running || app.undoText === null) return;
  $("completion-text").value = app.undoText;
  store(COMPLETION_KEY, app.undoText);
  app.undoText = null;
  $("undo").disabled = true;
  $("completion-stats").textContent = "";
}
