// One message of the conversation as DOM nodes. User text is shown as typed (plain text); replies go
// through the markdown subset. Nothing is ever set with innerHTML.

import { renderMarkdown } from "./markdown.js";

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k in node && !k.startsWith("aria")) node[k] = v;
    else node.setAttribute(k, v);
  }
  node.append(...children);
  return node;
}
export { el };

function ms(value) {
  return value >= 1000 ? `${(value / 1000).toFixed(1)} s` : `${Math.round(value)} ms`;
}

// The reply's status line from the server's `timings` and `usage` (the last two chunks of the stream).
export function statusText(m) {
  const parts = [];
  const t = m.timings;
  if (t) {
    parts.push(`first token ${ms(t.first_token_ms)}`);
    if (t.images_encoded) parts.push(`image encode ${ms(t.image_encode_ms)}`);
    else if (t.image_tokens) parts.push("image cached");
    parts.push(`${t.predicted_per_second.toFixed(1)} tokens/s`);
    const cached = m.usage?.prompt_tokens_details?.cached_tokens ?? t.cache_n;
    const prompt = m.usage?.prompt_tokens ?? t.cache_n + t.prompt_n;
    parts.push(`${cached} of ${prompt} prompt tokens cached`);
  }
  if (m.stopped) parts.push("stopped");
  if (m.finish === "length") parts.push("cut at the token limit");
  return parts.join(" · ");
}

export function userNode(m) {
  const node = el("article", { class: "msg user", "aria-label": "You" });
  if (m.images?.length) {
    const thumbs = el("div", { class: "thumbs" });
    for (const im of m.images) {
      const label = `${im.name} (${im.width}×${im.height}${im.detail === "high" ? ", high detail" : ""})`;
      thumbs.append(el("img", { src: im.url, alt: label, title: label, class: "thumb-img" }));
    }
    node.append(thumbs);
  }
  if (m.text) node.append(el("div", { class: "text" }, m.text));
  return node;
}

// A reply: collapsed reasoning, the answer, an error if any, the status line and its buttons.
// `update(m, live)` redraws it as chunks come in; the <details> is kept so that an opened one stays open.
export function assistantNode(m, { onCopy, onRegenerate }) {
  const reasoningBody = el("div", { class: "md" });
  const summary = el("summary", {}, "Reasoning");
  const reasoning = el("details", { class: "reasoning" }, summary, reasoningBody);
  const body = el("div", { class: "md answer" });
  const error = el("p", { class: "error", role: "alert" });
  const status = el("span", { class: "status" });
  const copy = el("button", { type: "button", class: "ghost small", onclick: () => onCopy(m, copy) }, "Copy");
  const regen = el("button", { type: "button", class: "ghost small", onclick: () => onRegenerate(m) }, "Regenerate");
  const meta = el("div", { class: "meta" }, status, el("span", { class: "actions" }, copy, regen));
  const node = el("article", { class: "msg assistant", "aria-label": "Assistant" }, reasoning, body, error, meta);

  node.update = (live, last) => {
    reasoning.hidden = !m.reasoning;
    if (m.reasoning) {
      summary.textContent = live && !m.content ? "Thinking…" : "Reasoning";
      reasoningBody.replaceChildren(renderMarkdown(m.reasoning));
    }
    body.replaceChildren(renderMarkdown(m.content || ""));
    body.hidden = !m.content && !(live && !m.reasoning);
    if (live && !m.content && !m.reasoning) body.replaceChildren(el("p", { class: "muted waiting" }, "…"));
    error.hidden = !m.error;
    error.textContent = m.error || "";
    status.textContent = live ? "" : statusText(m);
    copy.hidden = live || !m.content;
    regen.hidden = live || !last;
    regen.textContent = m.error ? "Try again" : "Regenerate";
    node.setAttribute("aria-busy", live ? "true" : "false");
  };
  return node;
}
