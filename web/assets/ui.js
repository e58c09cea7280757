// Small helpers the console's pages share: the API, elements, tables, server-sent
// events over fetch (so an error answer can be read), and formatting.

/** Build an element: h("button", {class: "x", onclick: f}, "text", child). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** An API error: the status and the server's message. */
export class ApiError extends Error {
  constructor(status, body) {
    super(body && body.detail ? body.detail : `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
  }
}

const TOKEN_KEY = "weir.token";

/** The API token the user gave (when the server asks for one). */
export function token() {
  return localStorage.getItem(TOKEN_KEY) || "";
}

/**
 * Keep `value` as the token: sent as a bearer header by `api`, and as a cookie that
 * lets event streams and downloads read (the server takes the cookie for GET only).
 */
export function setToken(value) {
  localStorage.setItem(TOKEN_KEY, value);
  const path = new URL(document.baseURI).pathname;
  // Over HTTPS the cookie is never sent in the clear.
  const secure = location.protocol === 'https:' ? '; Secure' : '';
  document.cookie = `weir_token=${encodeURIComponent(value)}; path=${path}; SameSite=Strict${secure}`;
}

function authorized(headers) {
  if (token()) headers.authorization = `Bearer ${token()}`;
  return headers;
}

/** A 401 from the server: the console asks for a token. */
function unauthorized(status) {
  if (status === 401) window.dispatchEvent(new CustomEvent("weir:unauthorized"));
}

/** Call the API (relative to the page's base); JSON in and out. */
export async function api(path, { method = "GET", body, raw } = {}) {
  const init = { method, headers: authorized({}) };
  if (body !== undefined) {
    init.body = raw ? body : JSON.stringify(body);
    if (!raw) init.headers["content-type"] = "application/json";
  }
  const r = await fetch(path.replace(/^\//, ""), init);
  const text = await r.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { json = { detail: text }; }
  if (!r.ok) {
    unauthorized(r.status);
    throw new ApiError(r.status, json);
  }
  return { json, headers: r.headers };
}

/**
 * Follow server-sent events from `path` with fetch. Calls onEvent(name, data) per
 * event; resolves when the stream ends; rejects with ApiError on an error answer.
 * Abort it with the signal.
 */
export async function followEvents(path, onEvent, signal) {
  const r = await fetch(path.replace(/^\//, ""), { signal, headers: authorized({ accept: "text/event-stream" }) });
  if (!r.ok) {
    unauthorized(r.status);
    let body = null;
    try { body = await r.json(); } catch { /* not JSON */ }
    throw new ApiError(r.status, body);
  }
  const reader = r.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) onEvent(name, data.join("\n"));
    }
  }
}

/** A table of `{columns, rows}`; `onSort(column)` makes headers buttons. */
export function rowsTable(result, { sort, desc, onSort, caption } = {}) {
  const head = h("tr", {}, result.columns.map((c) => {
    if (!onSort) return h("th", { scope: "col" }, c);
    const mark = sort === c ? (desc ? " ▼" : " ▲") : "";
    const sorted = sort === c ? (desc ? "descending" : "ascending") : "none";
    return h("th", { scope: "col", "aria-sort": sorted },
      h("button", { class: "link", "data-column": c, onclick: () => onSort(c), title: `sort by ${c}` }, c + mark));
  }));
  return h("table", { class: "rows" },
    caption ? h("caption", {}, caption) : null,
    h("thead", {}, head),
    h("tbody", {}, result.rows.map((r) => h("tr", {}, r.map((v) => h("td", {}, show(v)))))));
}

/** A cell's text. */
export function show(v) {
  if (v === null || v === undefined) return "NULL";
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

export function time(ms) {
  return ms === null || ms === undefined ? "" : new Date(ms).toISOString().replace("T", " ").replace("Z", "");
}

export function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1024 ** 3) return `${(n / 1024 / 1024).toFixed(1)} MiB`;
  return `${(n / 1024 ** 3).toFixed(2)} GiB`;
}

export function duration(seconds) {
  const s = Math.floor(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

/** An error line in `el` (empty clears it). */
export function showError(el, e) {
  el.textContent = e ? (e.status ? `${e.status}: ${e.message}` : String(e.message || e)) : "";
  el.hidden = !e;
}

/** Ask before a destructive action; true to go on. */
export function confirmAction(text) {
  return window.confirm(text);
}

/** Colors of chart series, readable in light and dark. */
export const PALETTE = ["#2f7ed8", "#e4572e", "#29a36a", "#a05fd6", "#e3a21a", "#17a2b8", "#d6336c", "#6c757d"];

/** Run `tick` now and every `ms`; returns the stopper. */
export function every(ms, tick) {
  tick();
  const id = setInterval(tick, ms);
  return () => clearInterval(id);
}

/** A labelled control. */
export function labelled(text, control) {
  return h("label", { class: "control" }, h("span", {}, text), control);
}

/** A figure with its label. */
export function fact(label, value) {
  return h("div", { class: "fact" }, h("span", { class: "muted" }, label), " ", h("strong", {}, value));
}

/** A rate or count, short: 1.2 k, 3.40 M. */
export function fmt(n) {
  if (n === undefined || n === null) return "";
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)} M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)} k`;
  return n.toFixed(n < 10 ? 1 : 0);
}
