// The chat page: conversations, the composer with its attachments, and the streamed replies.

import { ApiError, onKeyNeeded, request, streamChat } from "./api.js";
import { imageFiles, prepareImage } from "./images.js";
import { assistantNode, el, userNode } from "./messages.js";
import * as store from "./store.js";

const $ = (id) => document.getElementById(id);
const ui = Object.fromEntries(
  ["sidebar", "new-chat", "chats", "menu", "chat-title", "model", "export", "log", "empty", "composer", "attachments",
    "file", "input", "send", "stop", "notice", "detail", "detail-label", "thinking", "drop", "key-dialog", "key",
    "key-why"].map((id) => [id.replace(/-(\w)/g, (_, c) => c.toUpperCase()), $(id)]),
);

const state = {
  chat: null,
  pending: [], // images attached and not sent yet
  controller: null, // the streaming reply's AbortController
  live: null, // {chat, msg, node} of the reply being streamed
  modelId: null,
};

// ---- conversations -------------------------------------------------------------------------------

function save(chat = state.chat) {
  if (!chat.messages.length) return;
  chat.updated = Date.now();
  if (!store.saveChat(chat)) {
    notice("The browser's storage is full: this conversation will not survive a reload. Delete old conversations to make room.");
  }
  renderChats();
}

function openChat(chat) {
  state.chat = chat;
  // A reply that was still streaming when the page was closed ends where it was.
  for (const m of chat.messages) {
    if (m.role === "assistant" && !m.finish && !m.error && m !== state.live?.msg) m.stopped = true;
  }
  if (chat.messages.length) store.setCurrent(chat.id);
  renderChat();
  renderChats();
  closeSidebar();
}

function startNewChat() {
  if (state.chat?.messages.length === 0) return ui.input.focus();
  openChat(store.newChat());
  ui.input.focus();
}

function renderChats() {
  const items = store.listChats();
  if (state.chat && !items.some((c) => c.id === state.chat.id)) items.unshift(state.chat);
  ui.chats.replaceChildren(...items.map((c) => chatItem(c)));
}

function chatItem(c) {
  const current = c.id === state.chat?.id;
  const open = el("button", { type: "button", class: "chat-link", title: c.title, onclick: () => switchTo(c.id) }, c.title);
  if (current) open.setAttribute("aria-current", "true");
  const rename = el("button", { type: "button", class: "icon small", "aria-label": `Rename “${c.title}”`, title: "Rename",
    onclick: () => startRename(li, c) }, "✎");
  const del = el("button", { type: "button", class: "icon small", "aria-label": `Delete “${c.title}”`, title: "Delete",
    onclick: () => removeChat(c) }, "×");
  const li = el("li", { class: current ? "current" : "" }, open, rename, del);
  return li;
}

function switchTo(id) {
  if (id === state.chat?.id) return closeSidebar();
  // The conversation whose reply is streaming is the object in memory, not its copy in storage.
  const chat = state.live?.chat.id === id ? state.live.chat : store.loadChat(id);
  if (chat) openChat(chat);
}

function startRename(li, c) {
  const input = el("input", { type: "text", value: c.title, class: "rename", "aria-label": "New name" });
  let done = false;
  const finish = (keep) => {
    if (done) return;
    done = true;
    const title = input.value.trim();
    if (keep && title) {
      const chat = c.id === state.chat?.id ? state.chat : store.loadChat(c.id);
      if (chat) {
        chat.title = title.slice(0, 80);
        if (chat === state.chat) ui.chatTitle.textContent = chat.title;
        if (chat.messages.length) store.saveChat(chat);
        else c.title = chat.title;
      }
    }
    renderChats();
  };
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter") finish(true);
    if (e.key === "Escape") {
      e.stopPropagation();
      finish(false);
    }
  });
  input.addEventListener("blur", () => finish(true));
  li.replaceChildren(input);
  input.select();
}

function removeChat(c) {
  if (!confirm(`Delete “${c.title}”? This cannot be undone.`)) return;
  store.deleteChat(c.id);
  if (state.live?.chat.id === c.id) {
    state.live.chat.deleted = true; // its reply's end must not save it again
    state.controller.abort();
  }
  if (c.id === state.chat?.id) {
    const next = store.listChats()[0];
    openChat((next && store.loadChat(next.id)) || store.newChat());
  } else {
    renderChats();
  }
}

function exportChat() {
  const chat = state.chat;
  const blob = new Blob([store.exportJSON(chat)], { type: "application/json" });
  const a = el("a", { href: URL.createObjectURL(blob), download: `${chat.title.replace(/[^\w-]+/g, "-").slice(0, 40) || "chat"}.json` });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
}

// ---- the message list ----------------------------------------------------------------------------

function renderChat() {
  const chat = state.chat;
  ui.chatTitle.textContent = chat.title;
  const last = chat.messages.length - 1;
  const nodes = chat.messages.map((m, i) => {
    if (m.role === "user") return userNode(m);
    const node = assistantNode(m, { onCopy: copy, onRegenerate: regenerate });
    const live = state.live?.msg === m;
    if (live) state.live.node = node;
    node.update(live, i === last);
    return node;
  });
  ui.empty.hidden = nodes.length > 0;
  ui.log.replaceChildren(ui.empty, ...nodes);
  ui.log.scrollTop = ui.log.scrollHeight;
}

// Redraws the streaming reply at most once a frame, and follows it down unless the user scrolled up.
let frame = 0;
function drawLive() {
  if (frame) return;
  frame = requestAnimationFrame(() => {
    frame = 0;
    const live = state.live;
    if (!live || !live.node.isConnected) return;
    const log = ui.log;
    const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 80;
    live.node.update(true, true);
    if (atBottom) log.scrollTop = log.scrollHeight;
  });
}

async function copy(m, button) {
  try {
    await navigator.clipboard.writeText(m.content);
  } catch {
    // http:// on another host is no secure context: fall back to a selected textarea
    const area = el("textarea", { value: m.content, class: "offscreen" });
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  button.textContent = "Copied";
  setTimeout(() => (button.textContent = "Copy"), 1500);
}

// ---- sending -------------------------------------------------------------------------------------

// The conversation as the API takes it. An exchange that ended in an error is left out: the server
// refused it, and sending it again would fail the next message too.
function apiMessages(messages) {
  const out = [];
  messages.forEach((m, i) => {
    if (m.role === "user") {
      if (messages[i + 1]?.error) return;
      const parts = (m.images || []).map((im) => ({
        type: "image_url",
        image_url: im.detail === "high" ? { url: im.url, detail: "high" } : { url: im.url },
      }));
      if (m.text) parts.push({ type: "text", text: m.text });
      out.push({ role: "user", content: parts });
    } else if (!m.error && m.content) {
      out.push({ role: "assistant", content: m.content });
    }
  });
  return out;
}

function send() {
  if (state.controller) return;
  const text = ui.input.value.trim();
  const images = state.pending.filter((a) => a.url);
  if (!text && !images.length) return;
  const chat = state.chat;
  chat.messages.push({
    role: "user",
    text,
    images: images.map(({ url, width, height, name, detail }) => ({ url, width, height, name, detail })),
    created: Date.now(),
  });
  if (chat.title === "New chat") chat.title = text ? text.replace(/\s+/g, " ").slice(0, 48) : images[0].name;
  ui.input.value = "";
  autosize();
  state.pending = [];
  renderPending();
  notice("");
  reply();
}

async function reply() {
  if (!state.modelId) loadModel(); // the page opened without the key or the server: try again now
  const chat = state.chat;
  const history = apiMessages(chat.messages);
  const msg = { role: "assistant", content: "", reasoning: "", thinking: ui.thinking.checked, created: Date.now() };
  chat.messages.push(msg);
  const controller = new AbortController();
  state.controller = controller;
  state.live = { chat, msg, node: null };
  setBusy(true);
  save(chat);
  renderChat();
  const body = {
    ...(state.modelId ? { model: state.modelId } : {}),
    messages: history,
    stream: true,
    stream_options: { include_usage: true },
    chat_template_kwargs: { enable_thinking: msg.thinking },
  };
  try {
    await streamChat(body, controller.signal, (chunk) => {
      const choice = chunk.choices?.[0];
      if (choice?.delta?.reasoning_content) msg.reasoning += choice.delta.reasoning_content;
      if (choice?.delta?.content) msg.content += choice.delta.content;
      if (choice?.finish_reason) msg.finish = choice.finish_reason;
      if (chunk.timings) msg.timings = chunk.timings;
      if (chunk.usage) msg.usage = chunk.usage;
      drawLive();
    });
    if (!msg.finish) msg.stopped = true; // the stream ended without its last chunk
  } catch (err) {
    if (err.name === "AbortError") msg.stopped = true;
    else msg.error = err instanceof ApiError ? err.message : `Something went wrong reading the reply: ${err.message}`;
  } finally {
    state.controller = null;
    state.live = null;
    setBusy(false);
    if (!chat.deleted) save(chat);
    if (chat === state.chat) renderChat();
  }
}

function regenerate(m) {
  const messages = state.chat.messages;
  if (state.controller || messages[messages.length - 1] !== m) return;
  messages.pop();
  reply();
}

function stop() {
  state.controller?.abort();
}

function setBusy(busy) {
  ui.send.hidden = busy;
  ui.stop.hidden = !busy;
  if (busy) ui.stop.focus({ preventScroll: true });
  else if (document.activeElement === ui.stop || document.activeElement === document.body) ui.input.focus();
}

// ---- attachments and encode-ahead ---------------------------------------------------------------

const detail = () => (ui.detail.checked && !ui.detail.disabled ? "high" : "auto");

async function attach(files) {
  const list = imageFiles(files);
  if (!list.length) return notice("Only images can be attached.");
  if (!ui.file.dataset.enabled) return notice("This server has no mmproj, so it cannot read images.");
  for (const file of list) {
    const item = { key: Math.random().toString(36).slice(2), name: file.name || "pasted image", status: "reading" };
    state.pending.push(item);
    renderPending();
    try {
      Object.assign(item, await prepareImage(file));
    } catch (err) {
      state.pending = state.pending.filter((a) => a !== item);
      renderPending();
      notice(err.message);
      continue;
    }
    prepareAhead(item);
  }
}

// Encodes the image on the server now (the embedding is cached), so that sending costs only the prompt.
async function prepareAhead(item) {
  const want = detail();
  Object.assign(item, { detail: want, status: "preparing", note: "" });
  renderPending();
  let status, note;
  try {
    const res = await request("v1/images/prepare", { body: { image_url: { url: item.url, detail: want } } });
    const done = await res.json();
    status = "ready";
    note = `${done.images[0].tokens} image tokens, ${done.images[0].cached ? "already cached" : `encoded in ${Math.round(done.encode_ms)} ms`}`;
  } catch (err) {
    status = "failed";
    note = err.message;
  }
  if (item.detail !== want) return; // the detail switch changed meanwhile: a newer call is on its way
  Object.assign(item, { status, note });
  if (status === "failed" && state.pending.includes(item)) notice(`${item.name}: ${note}`);
  renderPending();
}

const MARKS = { reading: "reading…", preparing: "preparing…", ready: "ready", failed: "not prepared" };

function renderPending() {
  ui.attachments.replaceChildren(...state.pending.map((item) => {
    const remove = el("button", { type: "button", class: "remove", "aria-label": `Remove ${item.name}`, onclick: () => {
      state.pending = state.pending.filter((a) => a !== item);
      renderPending();
    } }, "×");
    const mark = el("span", { class: `mark ${item.status}`, title: item.note || "" }, MARKS[item.status]);
    const img = item.url ? el("img", { src: item.url, alt: item.name }) : el("span", { class: "placeholder" });
    return el("figure", { class: "thumb", title: `${item.name}${item.note ? `: ${item.note}` : ""}` }, img, mark, remove);
  }));
  ui.attachments.hidden = state.pending.length === 0;
}

function notice(text) {
  ui.notice.textContent = text;
  ui.notice.hidden = !text;
}

// ---- the server: model, modes, key --------------------------------------------------------------

async function loadModel() {
  try {
    const res = await request("v1/models");
    const [card] = (await res.json()).data;
    state.modelId = card.id;
    const modes = card.modes || [];
    ui.model.textContent = `${card.id}${modes.length ? ` · ${modes.join(" + ")}` : " · text only"}`;
    const high = modes.includes("4x");
    ui.detail.disabled = !high;
    ui.detailLabel.title = high ? "High detail: the 4x mmproj, finer text and small objects, slower"
      : "This server has no 4x mmproj: start it with a second --mmproj (the 4x one) for high detail";
    if (modes.length) ui.file.dataset.enabled = "1";
  } catch (err) {
    ui.model.textContent = "not connected";
    notice(err.message);
    ui.file.dataset.enabled = "1"; // let the server say what it can do when a message is sent
  }
}

onKeyNeeded((refused) => new Promise((resolve) => {
  ui.keyWhy.textContent = refused ? "The server refused that key. Enter the key the server was started with."
    : "This server needs an API key (serve --api-key). It is kept for this browser tab only.";
  ui.key.value = "";
  ui.keyDialog.returnValue = ""; // Escape closes the dialog without setting it
  ui.keyDialog.addEventListener("close", () => {
    resolve(ui.keyDialog.returnValue === "ok" && ui.key.value.trim() ? ui.key.value.trim() : null);
  }, { once: true });
  ui.keyDialog.showModal();
}));

// ---- input ---------------------------------------------------------------------------------------

function autosize() {
  ui.input.style.height = "auto";
  ui.input.style.height = `${Math.min(ui.input.scrollHeight, 200)}px`;
}

function closeSidebar() {
  ui.sidebar.classList.remove("open");
  ui.menu.setAttribute("aria-expanded", "false");
}

ui.composer.addEventListener("submit", (e) => {
  e.preventDefault();
  send();
});
ui.input.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    send();
  }
});
ui.input.addEventListener("input", autosize);
ui.stop.addEventListener("click", stop);
document.addEventListener("keydown", (e) => {
  if (e.key === "Escape" && state.controller && !ui.keyDialog.open) {
    e.preventDefault();
    stop();
  }
});
ui.file.addEventListener("change", () => {
  attach(ui.file.files);
  ui.file.value = "";
});
document.addEventListener("paste", (e) => {
  const files = imageFiles(e.clipboardData?.items);
  if (files.length) {
    e.preventDefault();
    attach(files);
  }
});
// The drop mark shows while files are dragged over the window; the counter survives nested elements.
let dragDepth = 0;
const dragsFiles = (e) => [...(e.dataTransfer?.types || [])].includes("Files");
window.addEventListener("dragenter", (e) => {
  if (!dragsFiles(e)) return;
  e.preventDefault();
  dragDepth++;
  ui.drop.hidden = false;
});
window.addEventListener("dragover", (e) => dragsFiles(e) && e.preventDefault());
window.addEventListener("dragleave", () => {
  dragDepth = Math.max(0, dragDepth - 1);
  if (!dragDepth) ui.drop.hidden = true;
});
window.addEventListener("drop", (e) => {
  e.preventDefault();
  dragDepth = 0;
  ui.drop.hidden = true;
  if (e.dataTransfer?.files.length) attach(e.dataTransfer.files);
});
ui.detail.addEventListener("change", () => state.pending.filter((a) => a.url).forEach(prepareAhead));
ui.newChat.addEventListener("click", startNewChat);
ui.export.addEventListener("click", exportChat);
ui.menu.addEventListener("click", () => {
  const open = ui.sidebar.classList.toggle("open");
  ui.menu.setAttribute("aria-expanded", String(open));
});
// On a phone the open list covers the chat: a tap anywhere else closes it.
document.addEventListener("click", (e) => {
  if (ui.sidebar.classList.contains("open") && !ui.sidebar.contains(e.target) && !ui.menu.contains(e.target)) closeSidebar();
});

// ---- start ---------------------------------------------------------------------------------------

const last = store.currentId();
openChat((last && store.loadChat(last)) || store.newChat());
renderPending();
loadModel();
ui.input.focus();
