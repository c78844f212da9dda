// A small Markdown renderer for model replies.
//
// Safety rule: the WHOLE reply is HTML-escaped before any Markdown is recognised. After that the
// renderer only inserts tags it writes itself, and every piece of model text inside them is the
// already-escaped text, so a reply can never create an element, an attribute or a script. Links are
// kept only for http(s) URLs (escaped, so they cannot leave the href attribute).
//
// Supported: headings, paragraphs (single newlines kept as line breaks), bold, italic,
// strikethrough, inline code, fenced code blocks (with a copy button), bullet and numbered lists
// (nested by indentation), block quotes, horizontal rules, GitHub-style tables, http(s) links.

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

export function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

export function renderMarkdown(source) {
  // NUL is our placeholder marker for inline code spans, so the model may not send one.
  const escaped = escapeHtml(String(source).replace(/\u0000/g, "\uFFFD"));
  return renderBlocks(escaped.replace(/\r\n?/g, "\n").split("\n"));
}

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([\w+#.-]*).*$/;
const HEADING = /^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$/;
const RULE = /^ {0,3}([-*_])(?:\s*\1){2,}\s*$/;
const LIST_ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;
const QUOTE = /^ {0,3}&gt;\s?(.*)$/;
const TABLE_SEP = /^\s*\|?\s*:?-{1,}:?\s*(?:\|\s*:?-{1,}:?\s*)*\|?\s*$/;

function isBlank(line) {
  return /^\s*$/.test(line);
}

function startsBlock(line) {
  return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) || LIST_ITEM.test(line);
}

function renderBlocks(lines) {
  const out = [];
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (isBlank(line)) {
      i += 1;
      continue;
    }
    let m = line.match(FENCE);
    if (m) {
      const fence = m[1];
      const body = [];
      i += 1;
      // While a reply streams the closing fence may not have arrived yet: render what we have.
      while (i < lines.length && !lines[i].trim().startsWith(fence)) {
        body.push(lines[i]);
        i += 1;
      }
      i += 1;
      out.push(codeBlock(body.join("\n"), m[2]));
      continue;
    }
    m = line.match(HEADING);
    if (m) {
      const level = m[1].length;
      out.push(`<h${level}>${inline(m[2])}</h${level}>`);
      i += 1;
      continue;
    }
    if (RULE.test(line)) {
      out.push("<hr>");
      i += 1;
      continue;
    }
    if (line.includes("|") && i + 1 < lines.length && TABLE_SEP.test(lines[i + 1]) && lines[i + 1].includes("-")) {
      const rows = [line, lines[i + 1]];
      i += 2;
      while (i < lines.length && lines[i].includes("|") && !isBlank(lines[i])) {
        rows.push(lines[i]);
        i += 1;
      }
      out.push(table(rows));
      continue;
    }
    if (QUOTE.test(line)) {
      const inner = [];
      while (i < lines.length && QUOTE.test(lines[i])) {
        inner.push(lines[i].match(QUOTE)[1]);
        i += 1;
      }
      out.push(`<blockquote>${renderBlocks(inner)}</blockquote>`);
      continue;
    }
    m = line.match(LIST_ITEM);
    if (m) {
      const [html, next] = list(lines, i);
      out.push(html);
      i = next;
      continue;
    }
    const para = [];
    while (i < lines.length && !isBlank(lines[i]) && (para.length === 0 || !startsBlock(lines[i]))) {
      para.push(lines[i].trim());
      i += 1;
    }
    out.push(`<p>${para.map(inline).join("<br>")}</p>`);
  }
  return out.join("");
}

function indentOf(line) {
  return line.match(/^\s*/)[0].replace(/\t/g, "    ").length;
}

function list(lines, start) {
  const first = lines[start].match(LIST_ITEM);
  const baseIndent = first[1].length;
  const ordered = /\d/.test(first[2]);
  const items = [];
  let i = start;
  while (i < lines.length) {
    const m = lines[i].match(LIST_ITEM);
    if (!m || m[1].length !== baseIndent || /\d/.test(m[2]) !== ordered) break;
    const body = [m[3]];
    i += 1;
    // Lines indented past the marker (or blank lines followed by such) belong to this item.
    while (i < lines.length) {
      if (isBlank(lines[i])) {
        if (i + 1 < lines.length && indentOf(lines[i + 1]) > baseIndent) {
          body.push("");
          i += 1;
          continue;
        }
        break;
      }
      if (indentOf(lines[i]) > baseIndent) {
        body.push(lines[i].slice(Math.min(indentOf(lines[i]), baseIndent + 2)));
        i += 1;
        continue;
      }
      if (!LIST_ITEM.test(lines[i]) && !startsBlock(lines[i])) {
        body.push(lines[i]); // a lazy continuation line
        i += 1;
        continue;
      }
      break;
    }
    items.push(body);
  }
  const tag = ordered ? "ol" : "ul";
  const startNum = ordered ? parseInt(first[2], 10) : 1;
  const startAttr = ordered && startNum !== 1 ? ` start="${startNum}"` : "";
  const html = items
    .map((body) => {
      if (body.length === 1) return `<li>${inline(body[0].trim())}</li>`;
      const [head, ...rest] = body;
      const restHtml = renderBlocks(rest);
      return `<li>${inline(head.trim())}${restHtml}</li>`;
    })
    .join("");
  return [`<${tag}${startAttr}>${html}</${tag}>`, i];
}

function splitRow(row) {
  let s = row.trim();
  if (s.startsWith("|")) s = s.slice(1);
  if (s.endsWith("|") && !s.endsWith("\\|")) s = s.slice(0, -1);
  return s.split(/(?<!\\)\|/).map((c) => c.trim().replace(/\\\|/g, "|"));
}

function table(rows) {
  const header = splitRow(rows[0]);
  const aligns = splitRow(rows[1]).map((c) => {
    const left = c.startsWith(":");
    const right = c.endsWith(":");
    if (left && right) return ' class="al-c"';
    if (right) return ' class="al-r"';
    return "";
  });
  const cell = (tag, text, idx) => `<${tag}${aligns[idx] || ""}>${inline(text)}</${tag}>`;
  const head = `<tr>${header.map((c, idx) => cell("th", c, idx)).join("")}</tr>`;
  const body = rows
    .slice(2)
    .map((r) => {
      const cells = splitRow(r);
      while (cells.length < header.length) cells.push("");
      return `<tr>${cells.slice(0, header.length).map((c, idx) => cell("td", c, idx)).join("")}</tr>`;
    })
    .join("");
  return `<div class="table-wrap"><table><thead>${head}</thead><tbody>${body}</tbody></table></div>`;
}

function codeBlock(code, lang) {
  const label = lang ? `<span class="code-lang">${lang}</span>` : "<span></span>";
  return (
    `<div class="code-block"><div class="code-head">${label}` +
    `<button type="button" class="copy-code" data-testid="copy-code">Copy</button></div>` +
    `<pre><code>${code}</code></pre></div>`
  );
}

// Inline Markdown on already-escaped text. Code spans are cut out first so nothing inside them
// is treated as emphasis or a link.
function inline(text) {
  const spans = [];
  let s = text.replace(/(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)/g, (_, _ticks, code) => {
    spans.push(`<code>${code.trim()}</code>`);
    return `\u0000${spans.length - 1}\u0000`;
  });
  s = s.replace(/!?\[([^\]]+)\]\((https?:\/\/[^\s)]+)\)/g, (_, label, url) => {
    spans.push(`<a href="${url}" target="_blank" rel="noopener noreferrer">${emphasis(label)}</a>`);
    return `\u0000${spans.length - 1}\u0000`;
  });
  const restore = (t) => t.replace(/\u0000(\d+)\u0000/g, (_, n) => spans[Number(n)]);
  return restore(restore(emphasis(s))); // twice: a link label may hold a code span
}

function emphasis(text) {
  let s = text.replace(/\*\*(?=\S)([\s\S]*?\S)\*\*/g, "<strong>$1</strong>");
  s = s.replace(/(^|[^\w])__(?=\S)([\s\S]*?\S)__(?!\w)/g, "$1<strong>$2</strong>");
  s = s.replace(/(^|[^*\w])\*(?=[^\s*])([^*]*?[^\s*])\*(?!\*)/g, "$1<em>$2</em>");
  s = s.replace(/(^|[^\w])_(?=[^\s_])([^_]*?[^\s_])_(?!\w)/g, "$1<em>$2</em>");
  return s.replace(/~~(?=\S)([\s\S]*?\S)~~/g, "<del>$1</del>");
}
