// The weir console: a catalog sidebar, the query page (editor, run, preview, create a
// view), and the other pages, each in a module of its own, chosen by the URL's hash
// (#/query, #/view/NAME, #/sources, #/plugins, #/health).
import { h, api, ApiError, followEvents, rowsTable, showError, confirmAction, bytes, setToken } from "./ui.js";
import { createEditor, history, remember, EXAMPLES } from "./editor.js";
import { viewPage } from "./view.js";
import { sourcesPage } from "./sources.js";
import { pluginsPage } from "./plugins.js";
import { healthPage } from "./health.js";

const REFRESH_MS = 2000;
const PREVIEW_ROWS = 1000;

/** What the sidebar and the editor's completion know; refreshed every REFRESH_MS. */
export const catalog = { sources: [], streams: [], views: [], sinks: [], plugins: [], checkpoints: null };
const opened = new Set(); // sidebar entries the user expanded, kept across refreshes
let editor = null;
let lastStatement = "";
let current = null; // the page shown: { leave() }
let shownCatalog = ""; // what the sidebar shows, to rebuild it only on a change
let pendingStatement = null; // run when the query page opens (Explain from the sidebar)

async function refreshCatalog() {
  try {
    const [s, v, k, p, c, st] = await Promise.all([
      api("api/v1/sources"), api("api/v1/views"), api("api/v1/sinks"), api("api/v1/plugins"),
      api("api/v1/checkpoints"), api("api/v1/streams"),
    ]);
    catalog.sources = s.json.sources;
    catalog.views = v.json.views;
    catalog.sinks = k.json.sinks;
    catalog.plugins = p.json.plugins;
    catalog.checkpoints = c.json;
    catalog.streams = st.json.streams;
    document.getElementById("reachable").textContent = "";
    showCheckpoint(c.json);
    // Rebuilt only when something shown changed, so focus and open lists stay put.
    const shown = JSON.stringify([catalog.sources.map((x) => [x.name, x.status, x.columns, x.views]),
      catalog.views.map((x) => [x.name, x.status, x.columns, x.read_by]), catalog.sinks.map((x) => [x.name, x.status, x.view]),
      catalog.plugins.map((x) => [x.name, x.status, x.functions, x.used_by]), catalog.streams]);
    if (shown !== shownCatalog) {
      shownCatalog = shown;
      renderCatalog();
      if (editor) editor.setCatalog(completionTables(), completionFunctions());
    }
  } catch (e) {
    document.getElementById("reachable").textContent = `server unreachable: ${e.message}`;
  }
}

function showCheckpoint(c) {
  const el = document.getElementById("checkpoint");
  const last = c.checkpoints && c.checkpoints[0];
  let text = last
    ? `last checkpoint #${last.epoch}, ${Math.max(0, Math.round((Date.now() - last.created_ms) / 1000))} s ago, ${bytes(last.bytes)}`
    : "no checkpoint yet";
  if (c.last_error) text += ` — failing: ${c.last_error}`;
  el.textContent = text;
  el.className = c.last_error ? "error" : "muted";
}

function completionTables() {
  const tables = {};
  for (const x of [...catalog.sources, ...catalog.views]) tables[x.name] = x.columns.map((c) => c.name);
  for (const s of catalog.streams) tables[s.name] = s.columns.map((c) => c.name);
  return tables;
}

function completionFunctions() {
  return catalog.plugins.flatMap((p) => p.functions.map((f) => ({
    name: f.name, detail: `(${f.args.join(", ")}) -> ${f.returns} · plugin ${p.name}`,
  })));
}

// ---- the catalog sidebar ----

function renderCatalog() {
  const aside = document.getElementById("catalog");
  const section = (title, items, entry) => h("section", { "aria-label": title },
    h("h2", {}, `${title} `, h("span", { class: "muted" }, `(${items.length})`)),
    items.length ? h("ul", {}, items.map(entry)) : h("p", { class: "muted" }, "none"));
  aside.replaceChildren(
    section("Sources", catalog.sources, (s) => item("source", s.name, s.status, s.columns, [
      action("Open", () => { location.hash = "#/sources"; }),
      action("Drop", () => drop("SOURCE", s.name, [...s.views.map((v) => `view ${v}`),
        ...catalog.streams.filter((x) => x.source === s.name).map((x) => `stream ${x.name}`)])),
    ])),
    section("Streams", catalog.streams, (s) => item("stream", s.name, `from ${s.source}`, s.columns, [
      action("Drop", () => drop("STREAM", s.name, catalog.views.filter((v) => v.source === s.name).map((v) => `view ${v.name}`))),
    ])),
    section("Views", catalog.views, (v) => item("view", v.name, v.status, v.columns, [
      action("Open", () => { location.hash = `#/view/${encodeURIComponent(v.name)}`; }),
      action("Explain", () => explain(v.name)),
      action("Drop", () => drop("MATERIALIZED VIEW", v.name, [
        ...catalog.sinks.filter((k) => k.view === v.name).map((k) => `sink ${k.name}`),
        ...v.read_by.map((r) => `view ${r}`)])),
    ])),
    section("Sinks", catalog.sinks, (k) => item("sink", k.name, `${k.status} · from ${k.view}`, null, [
      action("Drop", () => drop("SINK", k.name, [])),
    ])),
    section("Plugins", catalog.plugins, (p) => item("plugin", p.name, p.status,
      p.functions.map((f) => ({ name: f.name, data_type: `(${f.args.join(", ")}) -> ${f.returns}` })), [
        action("Open", () => { location.hash = "#/plugins"; }),
        action("Delete", () => deletePlugin(p)),
      ])),
  );
}

function item(kind, name, status, columns, actions) {
  const key = `${kind}:${name}`;
  const details = h("details", { open: opened.has(key), "data-name": name, "data-kind": kind },
    h("summary", {}, h("span", { class: "name" }, name), " ", h("span", { class: `badge ${status}` }, status)),
    columns && columns.length
      ? h("ul", { class: "columns" }, columns.map((c) => h("li", {}, h("code", {}, c.name), " ", h("span", { class: "muted" }, c.data_type))))
      : null,
    h("div", { class: "actions" }, actions));
  details.addEventListener("toggle", () => (details.open ? opened.add(key) : opened.delete(key)));
  return h("li", {}, details);
}

function action(label, run) {
  return h("button", { class: "small", onclick: run }, label);
}

/** Drop after a confirmation that names what depends on the object. */
async function drop(kind, name, dependents) {
  const also = dependents.length ? `\n\n${dependents.join(", ")} depend${dependents.length === 1 ? "s" : ""} on it: drop ${dependents.length === 1 ? "it" : "them"} first.` : "";
  if (!confirmAction(`DROP ${kind} ${name}?${also}`)) return;
  try {
    await api("api/v1/sql", { method: "POST", body: { sql: `DROP ${kind} ${name}` } });
    await refreshCatalog();
    if (location.hash === `#/view/${encodeURIComponent(name)}`) location.hash = "#/query";
  } catch (e) {
    window.alert(`${e.status}: ${e.message}`);
  }
}

/** Delete a plugin after a confirmation that names the views that use it. */
async function deletePlugin(p) {
  const users = p.used_by.length ? `\n\nUsed by ${p.used_by.join(", ")}: drop ${p.used_by.length === 1 ? "that view" : "those views"} first.` : "";
  if (!confirmAction(`Delete plugin ${p.name}?${users}`)) return;
  try {
    await api(`api/v1/plugins/${encodeURIComponent(p.name)}`, { method: "DELETE" });
    await refreshCatalog();
  } catch (e) {
    window.alert(`${e.status}: ${e.message}`);
  }
}

function explain(name) {
  const sql = `EXPLAIN VIEW ${name}`;
  if (queryUi) {
    editor.setText(sql);
    run(sql);
  } else {
    pendingStatement = sql;
    location.hash = "#/query";
  }
}

// ---- the query page ----

function queryPage(main) {
  const status = h("span", { id: "sql-status", class: "muted", role: "status" });
  const error = h("div", { id: "sql-error", class: "error", hidden: true, role: "alert" });
  const result = h("div", { id: "sql-result", class: "result" });
  const examples = h("select", { id: "examples", "aria-label": "Examples" },
    h("option", { value: "" }, "Examples…"), EXAMPLES.map(([label], i) => h("option", { value: i }, label)));
  const past = h("select", { id: "history", "aria-label": "History" });
  const fillHistory = () => past.replaceChildren(h("option", { value: "" }, "History…"),
    ...history().map((s, i) => h("option", { value: i }, s.length > 70 ? s.slice(0, 70) + "…" : s)));
  fillHistory();
  const viewName = h("input", { id: "view-name", placeholder: "view name", size: 16, "aria-label": "Name of the view to create" });
  const box = h("div", { id: "editor", class: "editor" });
  main.replaceChildren(
    h("h1", {}, "Query"),
    box,
    h("div", { class: "toolbar" },
      h("button", { id: "run", class: "primary", title: "Ctrl+Enter", onclick: () => run(editor.text()) }, "Run"),
      h("button", { id: "preview", title: "Ctrl+Shift+Enter", onclick: () => preview(editor.text()) }, "Preview"),
      h("button", { id: "stop-preview", onclick: () => stopPreview("stopped") }, "Stop"),
      h("span", { class: "sep" }),
      viewName,
      h("button", { id: "create-view", onclick: () => createView(viewName.value) }, "Create view"),
      h("span", { class: "sep" }),
      examples, past),
    h("p", { class: "muted hint" }, "Ctrl+Enter runs the statement; Ctrl+Shift+Enter previews a SELECT over sources live, creating nothing. Ctrl+Space completes names."),
    status, error, result);
  editor = createEditor(box, {
    initial: lastStatement || "SELECT * FROM bids_per_channel ORDER BY window_start DESC, bids DESC LIMIT 20",
    onRun: (t) => run(t),
    onPreview: (t) => preview(t),
  });
  editor.setCatalog(completionTables(), completionFunctions());
  examples.addEventListener("change", () => {
    if (examples.value !== "") editor.setText(EXAMPLES[Number(examples.value)][1]);
    examples.value = "";
  });
  past.addEventListener("change", () => {
    if (past.value !== "") editor.setText(history()[Number(past.value)]);
    past.value = "";
  });
  queryUi = { status, error, result, fillHistory };
  if (pendingStatement) {
    editor.setText(pendingStatement);
    run(pendingStatement);
    pendingStatement = null;
  }
  return { leave() { lastStatement = editor.text(); stopPreview(); editor = null; queryUi = null; } };
}

let queryUi = null;
let previewing = null; // AbortController of the running preview

function failed(e) {
  if (!queryUi) return;
  showError(queryUi.error, e);
  if (e instanceof ApiError && editor) editor.showError(e.message, e.body.position);
}

async function run(sql) {
  const ui = queryUi; // the page may be left while the statement runs
  if (!ui || !sql.trim()) return;
  stopPreview();
  remember(sql);
  ui.fillHistory();
  showError(ui.error, null);
  editor.clearError();
  ui.status.textContent = "running…";
  ui.result.replaceChildren();
  const started = performance.now();
  try {
    const { json, headers } = await api("api/v1/sql", { method: "POST", body: { sql } });
    const ms = Math.round(performance.now() - started);
    if (json.columns) {
      const cut = headers.get("weir-result-cut");
      ui.status.textContent = `${json.rows.length} row${json.rows.length === 1 ? "" : "s"} in ${ms} ms${cut ? ` — ${cut}` : ""}`;
      ui.result.replaceChildren(rowsTable(json));
    } else {
      ui.status.textContent = `${json.message} (${ms} ms)`;
      await refreshCatalog();
    }
  } catch (e) {
    ui.status.textContent = "";
    if (ui === queryUi) failed(e);
  }
}

/** Stream a SELECT's first rows; stops on Stop, a new statement, or leaving the page. */
async function preview(sql) {
  if (!queryUi || !sql.trim()) return;
  stopPreview();
  remember(sql);
  queryUi.fillHistory();
  showError(queryUi.error, null);
  editor.clearError();
  const controller = new AbortController();
  previewing = controller;
  const ui = queryUi;
  ui.status.textContent = "preview: waiting for rows…";
  ui.result.replaceChildren();
  let columns = [];
  let tbody = null;
  let count = 0;
  const url = `api/v1/preview?limit=${PREVIEW_ROWS}&sql=${encodeURIComponent(sql)}`;
  try {
    await followEvents(url, (event, data) => {
      if (event === "columns") {
        columns = JSON.parse(data).columns.map((c) => c.name);
        const table = rowsTable({ columns, rows: [] });
        table.id = "preview-table";
        tbody = table.tBodies[0];
        ui.result.replaceChildren(table);
      } else if (event === "rows") {
        const rows = JSON.parse(data).rows;
        // Arrival order: the newest rows at the bottom.
        for (const r of rows) tbody.append(h("tr", { class: "new" }, r.map((v) => h("td", {}, v === null ? "NULL" : String(v)))));
        count += rows.length;
        ui.status.textContent = `preview: ${count} row${count === 1 ? "" : "s"}, live`;
      } else if (event === "end") {
        ui.status.textContent = `preview: ${count} rows (${data === "limit" ? `the first ${PREVIEW_ROWS}` : "all"})`;
      } else if (event === "lagged") {
        ui.status.textContent = `preview: ${count} rows; ${data} batches skipped (too fast to show)`;
      }
    }, controller.signal);
  } catch (e) {
    if (e.name === "AbortError") return;
    ui.status.textContent = "";
    failed(e);
  } finally {
    if (previewing === controller) previewing = null;
  }
}

function stopPreview(why) {
  if (!previewing) return;
  previewing.abort();
  previewing = null;
  if (why && queryUi) queryUi.status.textContent += ` — ${why}`;
}

async function createView(name) {
  const sql = editor.text().trim();
  if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) {
    showError(queryUi.error, new Error("name the view first: letters, digits and _"));
    return;
  }
  if (/^\s*CREATE\s/i.test(sql)) {
    await run(sql);
    return;
  }
  stopPreview();
  try {
    await api("api/v1/sql", { method: "POST", body: { sql: `CREATE MATERIALIZED VIEW ${name} AS ${sql}` } });
    remember(sql);
    await refreshCatalog();
    location.hash = `#/view/${encodeURIComponent(name)}`;
  } catch (e) {
    // The position is in the statement with its CREATE prefix: shift it back.
    if (e.body && e.body.position && e.body.position.line === 1) {
      const shift = `CREATE MATERIALIZED VIEW ${name} AS `.length;
      e.body.position = { ...e.body.position, column: e.body.position.column - shift, end_column: e.body.position.end_column - shift };
    }
    failed(e);
  }
}

// ---- a token, when the server asks for one ----

/** Ask for an API token (the server answered 401); the catalog is read again with it. */
function askForToken() {
  if (document.getElementById("login")) return;
  const input = h("input", { id: "login-token", type: "password", size: 40, autocomplete: "off" });
  const form = h("form", { id: "login", class: "login", "aria-label": "API token" },
    h("p", {}, "This server needs an API token (", h("code", {}, "weir token create --role reader|writer|admin"), ")."),
    h("label", { for: input.id }, "token "), input, " ",
    h("button", { class: "primary", type: "submit" }, "Use token"));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    setToken(input.value.trim());
    form.remove();
    shownCatalog = "";
    await refreshCatalog();
    route();
  });
  document.querySelector("header.top").after(form);
  input.focus();
}
window.addEventListener("weir:unauthorized", askForToken);

// ---- routing ----

async function route() {
  const [, page, arg] = (location.hash || "#/query").match(/^#\/([a-z]+)\/?(.*)$/) || [null, "query", ""];
  if (current) current.leave();
  const main = document.getElementById("main");
  for (const a of document.querySelectorAll("nav a")) {
    a.setAttribute("aria-current", a.dataset.page === page ? "page" : "false");
  }
  const pages = {
    query: () => queryPage(main),
    view: () => viewPage(main, decodeURIComponent(arg), catalog),
    sources: () => sourcesPage(main, catalog, refreshCatalog),
    plugins: () => pluginsPage(main, catalog, refreshCatalog),
    health: () => healthPage(main, catalog, refreshCatalog),
  };
  current = (pages[page] || pages.query)();
}

// "#main" (the skip link) is not a page: stay where we are.
window.addEventListener("hashchange", () => { if (!location.hash || location.hash.startsWith("#/")) route(); });
await refreshCatalog();
setInterval(refreshCatalog, REFRESH_MS);
route();
