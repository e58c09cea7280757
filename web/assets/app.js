// The weir dashboard: polls the status endpoints, runs SQL, and follows one view over SSE.
"use strict";

const MAX_LIVE_ROWS = 200;
const $ = (id) => document.getElementById(id);

function cell(tag, text) {
  const el = document.createElement(tag);
  el.textContent = text === null || text === undefined ? "NULL" : String(text);
  return el;
}

function fillRows(tbody, rows) {
  tbody.replaceChildren(...rows.map((r) => {
    const tr = document.createElement("tr");
    r.forEach((v) => tr.appendChild(cell("td", v)));
    return tr;
  }));
}

function renderTable(result) {
  const table = document.createElement("table");
  const head = document.createElement("tr");
  result.columns.forEach((c) => head.appendChild(cell("th", c)));
  table.createTHead().appendChild(head);
  const body = table.createTBody();
  fillRows(body, result.rows);
  return table;
}

function time(ms) {
  return ms === null || ms === undefined ? "" : new Date(ms).toISOString().replace("T", " ").replace("Z", "");
}

async function getJson(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: ${r.status}`);
  return r.json();
}

function exportsOf(p) {
  return [
    ...p.functions.map((f) => `${f.name}(${f.args.join(", ")}) -> ${f.returns}`),
    ...p.transforms.map((t) => `transform ${t.name}: ${t.output}`),
  ].join("; ");
}

// The newest checkpoint and its age, or why checkpoints fail.
function showCheckpoint(c) {
  const el = $("checkpoint");
  const last = c && c.checkpoints && c.checkpoints[0];
  let text = last
    ? `last checkpoint #${last.epoch}, ${Math.max(0, Math.round((Date.now() - last.created_ms) / 1000))} s ago, ${(last.bytes / 1024).toFixed(1)} KiB`
    : "no checkpoint yet";
  if (c && c.last_error) text += ` — failing: ${c.last_error}`;
  el.textContent = text;
  el.className = c && c.last_error ? "error" : "muted";
}

async function refreshStatus() {
  try {
    const [s, v, d, p, c] = await Promise.all([
      getJson("/api/v1/sources"), getJson("/api/v1/views"), getJson("/api/v1/dead-letters?limit=20"),
      getJson("/api/v1/plugins"), getJson("/api/v1/checkpoints"),
    ]);
    showCheckpoint(c);
    fillRows($("plugins").tBodies[0], p.plugins.map((x) =>
      [x.name, x.version, exportsOf(x), x.reason ? `${x.status}: ${x.reason}` : x.status,
        x.calls, x.failures, x.used_by.join(", "), x.last_failure || ""]));
    fillRows($("sources").tBodies[0], s.sources.map((x) =>
      [x.name, x.connector, x.status, x.records_in, x.batches, x.dead_letters, time(x.watermark_ms)]));
    fillRows($("views").tBodies[0], v.views.map((x) =>
      [x.name, x.source, x.rows, x.rows_emitted, x.late_rows, x.open_windows, x.error ? `${x.status}: ${x.error}` : x.status]));
    fillRows($("dead-letters").tBodies[0], d.dead_letters.slice().reverse().map((x) =>
      [x.id, x.source, x.view || "", x.position ?? "", x.reason, x.raw.length > 120 ? x.raw.slice(0, 120) + "…" : x.raw]));
    $("dl-total").textContent = `(${d.total} in all)`;
    updatePicker(v.views.map((x) => x.name));
    $("health").textContent = "";
  } catch (e) {
    $("health").textContent = "server unreachable: " + e.message;
  }
}

async function runSql() {
  $("sql-error").textContent = "";
  $("sql-status").textContent = "running…";
  const started = performance.now();
  try {
    const r = await fetch("/api/v1/sql", {
      method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify({ sql: $("sql").value }),
    });
    const body = await r.json();
    const ms = Math.round(performance.now() - started);
    if (!r.ok) {
      $("sql-result").replaceChildren();
      $("sql-error").textContent = `${r.status} ${body.error}: ${body.detail}`;
      $("sql-status").textContent = "";
      return;
    }
    if (body.rows) {
      $("sql-result").replaceChildren(renderTable(body));
      $("sql-status").textContent = `${body.rows.length} rows in ${ms} ms`;
    } else {
      $("sql-result").replaceChildren(cell("p", body.message));
      $("sql-status").textContent = `done in ${ms} ms`;
    }
    refreshStatus();
  } catch (e) {
    $("sql-error").textContent = e.message;
    $("sql-status").textContent = "";
  }
}

let stream = null;

function updatePicker(names) {
  const picker = $("view-picker");
  const current = [...picker.options].map((o) => o.value);
  if (current.join() === names.join()) return;
  const chosen = picker.value;
  picker.replaceChildren(...names.map((n) => { const o = cell("option", n); o.value = n; return o; }));
  if (names.includes(chosen)) picker.value = chosen;
  if (picker.value !== chosen || !stream) follow(picker.value);
}

function appendLive(result, flash) {
  const table = $("live");
  if (!table.tHead.rows.length || table.dataset.cols !== result.columns.join()) {
    const head = document.createElement("tr");
    result.columns.forEach((c) => head.appendChild(cell("th", c)));
    table.tHead.replaceChildren(head);
    table.dataset.cols = result.columns.join();
  }
  const body = table.tBodies[0];
  for (const r of result.rows) {
    const tr = document.createElement("tr");
    if (flash) tr.className = "new";
    r.forEach((v) => tr.appendChild(cell("td", v)));
    body.insertBefore(tr, body.firstChild);
  }
  while (body.rows.length > MAX_LIVE_ROWS) body.deleteRow(body.rows.length - 1);
  $("live-status").textContent = `${body.rows.length} newest rows, live`;
}

async function follow(name) {
  if (stream) { stream.close(); stream = null; }
  $("live").tHead.replaceChildren();
  $("live").tBodies[0].replaceChildren();
  if (!name) return;
  stream = new EventSource(`/api/v1/views/${encodeURIComponent(name)}/stream`);
  stream.addEventListener("rows", (e) => appendLive(JSON.parse(e.data), true));
  stream.addEventListener("lagged", () => follow(name));
  try {
    appendLive(await getJson(`/api/v1/views/${encodeURIComponent(name)}?limit=${MAX_LIVE_ROWS}`), false);
  } catch (e) {
    $("live-status").textContent = e.message;
  }
}

// Upload a plugin: the server compiles and checks it, and answers its exports or why not.
async function uploadPlugin(file) {
  $("plugin-error").textContent = "";
  $("plugin-result").textContent = "";
  if (!file) { $("plugin-error").textContent = "choose a .wasm file"; return; }
  const name = $("plugin-name").value.trim() || file.name.replace(/\.wasm$/, "").replace(/^weir_plugin_/, "");
  $("plugin-result").textContent = `uploading ${name}…`;
  try {
    const r = await fetch(`/api/v1/plugins?name=${encodeURIComponent(name)}`, { method: "POST", body: file });
    const body = await r.json().catch(() => ({}));
    if (!r.ok) {
      $("plugin-result").textContent = "";
      $("plugin-error").textContent = `${r.status} ${body.error || ""}: ${body.detail || ""}`;
      return;
    }
    $("plugin-result").textContent = `${body.name} v${body.version}: ${exportsOf(body)}`;
    refreshStatus();
  } catch (e) {
    $("plugin-result").textContent = "";
    $("plugin-error").textContent = e.message;
  }
}

const drop = $("plugin-drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  uploadPlugin(e.dataTransfer.files[0]);
});
$("plugin-upload").addEventListener("click", () => uploadPlugin($("plugin-file").files[0]));
$("run").addEventListener("click", runSql);
$("sql").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) runSql(); });
$("view-picker").addEventListener("change", (e) => follow(e.target.value));
refreshStatus();
setInterval(refreshStatus, 1000);
