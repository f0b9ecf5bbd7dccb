// A small markdown subset rendered as DOM nodes: paragraphs, headings, lists, fenced code, inline code,
// bold and italic. Every character of the model's text ends up in a text node: nothing is parsed as HTML.

const FENCE = /^\s*(```|~~~)\s*([\w+#.-]*)\s*$/;
const ITEM = /^\s*([-*+]|\d{1,9}[.)])\s+(.*)$/;
const HEADING = /^\s*(#{1,6})\s+(.*?)\s*#*\s*$/;
// Code spans first (their inside is literal), then bold, then italic; `_` only at word edges (snake_case).
const INLINE = /(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)|\*\*(?=\S)([\s\S]*?\S)\*\*|__(?=\S)([\s\S]*?\S)__(?!\w)|\*(?=[^\s*])([\s\S]*?[^\s*])\*|(?<!\w)_(?=[^\s_])([\s\S]*?[^\s_])_(?!\w)/g;

function el(tag, ...children) {
  const node = document.createElement(tag);
  node.append(...children);
  return node;
}

export function inline(text) {
  const out = [];
  let last = 0;
  for (const m of text.matchAll(INLINE)) {
    if (m.index > last) out.push(text.slice(last, m.index));
    if (m[1]) out.push(el("code", m[2].length > 2 && m[2].startsWith(" ") && m[2].endsWith(" ") ? m[2].slice(1, -1) : m[2]));
    else if (m[3] !== undefined || m[4] !== undefined) out.push(el("strong", ...inline(m[3] ?? m[4])));
    else out.push(el("em", ...inline(m[5] ?? m[6])));
    last = m.index + m[0].length;
  }
  if (last < text.length) out.push(text.slice(last));
  return out;
}

// Lines of a paragraph: soft breaks become <br> so that poems and addresses keep their shape.
function paragraph(lines) {
  const p = el("p");
  lines.forEach((line, i) => {
    if (i) p.append(el("br"));
    p.append(...inline(line.trim()));
  });
  return p;
}

export function renderMarkdown(text) {
  const frag = document.createDocumentFragment();
  const lines = text.replace(/\r\n?/g, "\n").split("\n");
  let para = [];
  let list = null;
  const flush = () => {
    if (para.length) frag.append(paragraph(para));
    para = [];
  };
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    const fence = line.match(FENCE);
    if (fence) {
      flush();
      list = null;
      const body = [];
      // An unclosed fence (a reply still streaming) runs to the end of the text.
      for (i++; i < lines.length && !(lines[i].trim().startsWith(fence[1]) && FENCE.test(lines[i])); i++) body.push(lines[i]);
      const code = el("code", body.join("\n"));
      if (fence[2]) code.dataset.lang = fence[2];
      frag.append(el("pre", code));
      continue;
    }
    if (!line.trim()) {
      flush();
      list = null;
      continue;
    }
    const heading = line.match(HEADING);
    if (heading) {
      flush();
      list = null;
      frag.append(el(`h${Math.min(6, heading[1].length + 2)}`, ...inline(heading[2])));
      continue;
    }
    const item = line.match(ITEM);
    if (item) {
      flush();
      const ordered = /\d/.test(item[1]);
      if (!list || list.ordered !== ordered) {
        list = { ordered, node: el(ordered ? "ol" : "ul") };
        if (ordered && parseInt(item[1], 10) !== 1) list.node.start = parseInt(item[1], 10);
        frag.append(list.node);
      }
      list.node.append(el("li", ...inline(item[2])));
      continue;
    }
    if (list && /^\s{2,}\S/.test(line)) {
      // An indented line goes on with the list item above it.
      list.node.lastChild.append(" ", ...inline(line.trim()));
      continue;
    }
    list = null;
    para.push(line);
  }
  flush();
  return frag;
}
