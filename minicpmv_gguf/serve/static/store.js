// Conversations live in this browser's localStorage: an index of {id, title, updated} under one key and
// each conversation under its own key, so that saving the one being typed in does not rewrite them all.

const INDEX = "minicpmv.chats";
const PREFIX = "minicpmv.chat.";
const CURRENT = "minicpmv.current";

export function newChat() {
  const now = Date.now();
  return { id: `${now.toString(36)}-${Math.random().toString(36).slice(2, 8)}`, title: "New chat", created: now, updated: now, messages: [] };
}

export function listChats() {
  try {
    const index = JSON.parse(localStorage.getItem(INDEX) || "[]");
    return Array.isArray(index) ? index.sort((a, b) => b.updated - a.updated) : [];
  } catch {
    return [];
  }
}

export function loadChat(id) {
  try {
    const chat = JSON.parse(localStorage.getItem(PREFIX + id) || "null");
    return chat && Array.isArray(chat.messages) ? chat : null;
  } catch {
    return null;
  }
}

// Saves a conversation; false when the browser's storage is full (the page says so, the chat goes on).
export function saveChat(chat) {
  const index = listChats().filter((c) => c.id !== chat.id);
  index.push({ id: chat.id, title: chat.title, updated: chat.updated });
  try {
    localStorage.setItem(PREFIX + chat.id, JSON.stringify(chat));
    localStorage.setItem(INDEX, JSON.stringify(index));
    localStorage.setItem(CURRENT, chat.id);
    return true;
  } catch {
    return false;
  }
}

export function deleteChat(id) {
  localStorage.removeItem(PREFIX + id);
  localStorage.setItem(INDEX, JSON.stringify(listChats().filter((c) => c.id !== id)));
  if (localStorage.getItem(CURRENT) === id) localStorage.removeItem(CURRENT);
}

export function currentId() {
  return localStorage.getItem(CURRENT);
}

export function setCurrent(id) {
  localStorage.setItem(CURRENT, id);
}

// The export file: the conversation as stored, with a format tag so that a later importer knows it.
export function exportJSON(chat) {
  return JSON.stringify({ format: "minicpmv-gguf.chat/1", ...chat }, null, 2);
}
