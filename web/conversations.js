// Conversations as data: what is sent to the model, and the two export formats.

import { attachmentText, messageContent } from "./attachments.js";
import { download, slug } from "./util.js";

export function chatHistory(conv) {
  const messages = [];
  if (conv.system?.trim()) messages.push({ role: "system", content: conv.system });
  for (const m of conv.messages) {
    if (m.role === "assistant" && !m.content) continue; // a failed or empty reply is not context
    messages.push({ role: m.role, content: messageContent(m) });
  }
  return messages;
}

// Saves a conversation as a file: JSON (the messages as the API takes them) or Markdown.
export function exportConversation(conv, format, modelId) {
  if (format === "json") {
    const data = {
      title: conv.title,
      model: modelId,
      exported: new Date().toISOString(),
      messages: chatHistory(conv),
    };
    download(`${slug(conv.title)}.json`, "application/json", JSON.stringify(data, null, 2));
    return;
  }
  const parts = [`# ${conv.title}`, ""];
  if (conv.system?.trim()) parts.push("## System", "", conv.system, "");
  for (const m of conv.messages) {
    if (!m.content && !m.attachments?.length) continue;
    const files = (m.attachments || []).map((a) => attachmentText(a));
    parts.push(m.role === "user" ? "## User" : "## Assistant", "", ...files, m.content, "");
  }
  download(`${slug(conv.title)}.md`, "text/markdown", parts.join("\n"));
}
