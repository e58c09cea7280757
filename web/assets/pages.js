// The console's pages besides the query page: a view (its rows, chart and plan),
// sources (rates, lag, watermarks, dead letters), plugins, and health.
import { h, api, rowsTable, showError, confirmAction, time, bytes, duration } from "./ui.js";

const uPlot = window.WeirVendor.uPlot;
const PAGE_SIZES = [25, 50, 100, 500];
const CHART_ROWS = 5000;
const NUMERIC = /^(Int|UInt|Float|Decimal)/;
const TEMPORAL = /^(Timestamp|Date)/;

/** Colors of chart series, readable in light and dark. */
const PALETTE = ["#2f7ed8", "#e4572e", "#29a36a", "#a05fd6", "#e3a21a", "#17a2b8", "#d6336c", "#6c757d"];

/** Run `tick` now and every `ms`; returns the stopper. */
function every(ms, tick) {
  tick();
  const id = setInterval(tick, ms);
  return () => clearInterval(id);
}

/** A labelled control. */
function labelled(text, control) {
  return h("label", { class: "control" }, h("span", {}, text), control);
}

// ---- a view ----

export function viewPage(main, name, catalog) {
  const state = { offset: 0, limit: 50, sort: null, desc: false, consistency: "live", paused: false, dirty: true };
  const info = h("div", { class: "facts", id: "view-facts" });
  const statement = h("details", { id: "view-statement" });
  const table = h("div", { id: "view-table", class: "result" });
  const pager = h("div", { class: "pager" });
  const error = h("div", { class: "error", hidden: true, role: "alert" });
  const chartBox = h("div", { id: "view-chart", class: "chart", role: "img", "aria-label": `chart of ${name}` });
  const graph = h("div", { id: "view-graph", class: "graph" });
  const pause = h("button", { id: "pause", onclick: () => {
    state.paused = !state.paused;
    pause.textContent = state.paused ? "Resume" : "Pause";
    pause.setAttribute("aria-pressed", String(state.paused));
    state.dirty = true;
  } }, "Pause");
  const consistency = h("select", { id: "consistency" },
    h("option", { value: "live" }, "latest (live)"), h("option", { value: "committed" }, "committed (checkpointed)"));
  const pageSize = h("select", { id: "page-size" }, PAGE_SIZES.map((n) => h("option", { value: n, selected: n === state.limit }, `${n} rows`)));
  const download = (format, label) => h("a", {
    class: "button", download: `${name}.${format === "arrow" ? "arrows" : format}`,
    href: `api/v1/views/${encodeURIComponent(name)}?format=${format}`, "data-format": format,
  }, label);
  const downloads = [download("csv", "CSV"), download("json", "JSON"), download("arrow", "Arrow")];
  const xPick = h("select", { id: "chart-x" });
  const yPick = h("select", { id: "chart-y" });
  const byPick = h("select", { id: "chart-by" });
  main.replaceChildren(
    h("h1", {}, "View ", h("code", {}, name)),
    info,
    statement,
    h("div", { class: "toolbar" }, pause, labelled("Consistency", consistency), labelled("Page", pageSize),
      h("span", { class: "sep" }), h("span", { class: "muted" }, "Download"), downloads),
    error,
    h("section", { "aria-label": "Chart" }, h("h2", {}, "Chart"),
      h("div", { class: "toolbar" }, labelled("x", xPick), labelled("y", yPick), labelled("series by", byPick)),
      chartBox),
    h("section", { "aria-label": "Rows" }, h("h2", {}, "Rows"), pager, table),
    h("section", { "aria-label": "Operators" }, h("h2", {}, "Operators"), graph),
  );
  let status = null;
  const labels = { current: [] };
  let shownRows = "";
  let graphBefore = null;
  let chart = null;
  let chartKey = "";
  const base = `api/v1/views/${encodeURIComponent(name)}`;

  function fillPickers(columns) {
    if (xPick.options.length) return;
    const temporal = columns.filter((c) => TEMPORAL.test(c.data_type));
    const numeric = columns.filter((c) => NUMERIC.test(c.data_type));
    const keys = columns.filter((c) => !NUMERIC.test(c.data_type) && !TEMPORAL.test(c.data_type));
    const preferX = temporal.find((c) => c.name === "window_end") || temporal[0];
    xPick.replaceChildren(
      ...temporal.map((c) => h("option", { value: c.name, selected: c === preferX }, `${c.name} (time series)`)),
      ...columns.filter((c) => !TEMPORAL.test(c.data_type)).map((c) => h("option", { value: c.name, selected: !preferX && c === keys[0] }, `${c.name} (bars)`)));
    yPick.replaceChildren(...numeric.map((c, i) => h("option", { value: c.name, selected: i === 0 }, c.name)));
    byPick.replaceChildren(h("option", { value: "" }, "none"), ...keys.map((c) => h("option", { value: c.name }, c.name)));
    if (preferX && keys.length) byPick.value = keys[0].name;
  }

  async function refreshRows() {
    const q = new URLSearchParams({ offset: state.offset, limit: state.limit, consistency: state.consistency });
    if (state.sort) { q.set("sort", state.sort); q.set("desc", state.desc); }
    const { json, headers } = await api(`${base}?${q}`);
    const total = Number(headers.get("weir-total-rows") || json.rows.length);
    // Rebuilt only when something shown changed, so focus stays on a header or button.
    const key = JSON.stringify([q.toString(), total, json.rows]);
    if (key === shownRows) return;
    shownRows = key;
    table.replaceChildren(rowsTable(json, {
      sort: state.sort, desc: state.desc,
      onSort: (c) => {
        state.desc = state.sort === c ? !state.desc : false;
        state.sort = c;
        state.offset = 0;
        refreshRows();
      },
    }));
    const last = Math.min(total, state.offset + json.rows.length);
    pager.replaceChildren(
      h("button", { id: "prev-page", disabled: state.offset === 0, onclick: () => { state.offset = Math.max(0, state.offset - state.limit); refreshRows(); } }, "‹ Previous"),
      h("span", { id: "page-info", role: "status" }, total ? ` rows ${state.offset + 1}–${last} of ${total} ` : " no rows yet "),
      h("button", { id: "next-page", disabled: last >= total, onclick: () => { state.offset += state.limit; refreshRows(); } }, "Next ›"));
  }

  async function refreshChart() {
    const x = xPick.value, y = yPick.value, by = byPick.value;
    if (!x || !y || !status) return;
    const xType = status.columns.find((c) => c.name === x).data_type;
    const series = TEMPORAL.test(xType);
    const q = new URLSearchParams({ consistency: state.consistency, sort: series ? x : y, desc: true, limit: series ? CHART_ROWS : 20 });
    const { json } = await api(`${base}?${q}`);
    const col = (n) => json.columns.indexOf(n);
    const data = series ? timeSeries(json.rows, col(x), col(y), by ? col(by) : -1) : bars(json.rows, col(x), col(y));
    const key = [x, y, by, series, data.names.join()].join("|");
    labels.current = data.labels || [];
    const width = Math.max(300, chartBox.clientWidth - 8);
    if (!chart || key !== chartKey) {
      if (chart) chart.destroy();
      chartKey = key;
      chart = new uPlot(chartOptions(data, series, y, width, labels), data.columns, chartBox);
    } else {
      chart.setData(data.columns);
    }
    chartBox.dataset.kind = series ? "series" : "bars";
    chartBox.dataset.labels = labels.current.join();
    chartBox.dataset.points = String(data.columns[0].length);
    chartBox.dataset.last = String(data.columns[0][data.columns[0].length - 1] ?? "");
  }

  function showStatus(v) {
    status = v;
    fillPickers(v.columns);
    for (const a of downloads) a.href = `${base}?format=${a.dataset.format}&consistency=${state.consistency}`;
    info.replaceChildren(...[
      fact("status", h("span", { class: `badge ${v.status}` }, v.error ? `${v.status}: ${v.error}` : v.status)),
      fact("rows", v.rows), fact("emitted", v.rows_emitted), fact("late rows", v.late_rows),
      fact("open windows", v.open_windows), fact("state", bytes(v.state_bytes)),
      v.warning ? fact("warning", h("span", { class: "error" }, v.warning)) : null].filter(Boolean));
    if (!statement.firstChild) statement.append(h("summary", {}, "statement"), h("pre", {}, v.sql));
    graphBefore = drawGraph(graph, v, graphBefore);
  }

  async function tick() {
    try {
      const v = (await api("api/v1/views")).json.views.find((x) => x.name === name);
      if (!v) { showError(error, new Error(`no view named ${name}`)); return; }
      showStatus(v);
      if (state.paused || !state.dirty) return;
      state.dirty = false;
      await Promise.all([refreshRows(), refreshChart()]);
      showError(error, null);
    } catch (e) {
      showError(error, e);
    }
  }

  // Changes arrive over SSE; the page reads the current rows again at most once a tick.
  let events = null;
  const follow = () => {
    if (events) events.close();
    events = new EventSource(`${base}/stream?consistency=${state.consistency}`);
    events.addEventListener("rows", () => { state.dirty = true; });
    events.addEventListener("lagged", () => { state.dirty = true; });
  };
  follow();
  consistency.addEventListener("change", () => { state.consistency = consistency.value; state.dirty = true; follow(); tick(); });
  pageSize.addEventListener("change", () => { state.limit = Number(pageSize.value); state.offset = 0; state.dirty = true; tick(); });
  for (const p of [xPick, yPick, byPick]) p.addEventListener("change", () => { state.dirty = true; tick(); });
  const stop = every(1000, tick);
  return { leave() { stop(); if (events) events.close(); if (chart) chart.destroy(); } };
}

function fact(label, value) {
  return h("div", { class: "fact" }, h("span", { class: "muted" }, label), " ", h("strong", {}, value));
}

/** Rows as uPlot columns: x ascending; one series per key of `by` (the 8 largest), or one. */
function timeSeries(rows, xi, yi, byi) {
  const xs = [...new Set(rows.map((r) => millis(r[xi])))].sort((a, b) => a - b);
  const at = new Map(xs.map((x, i) => [x, i]));
  const keys = new Map();
  for (const r of rows) {
    const k = byi >= 0 ? String(r[byi]) : "";
    if (!keys.has(k)) keys.set(k, new Array(xs.length).fill(null));
    const col = keys.get(k);
    const i = at.get(millis(r[xi]));
    col[i] = (col[i] || 0) + Number(r[yi]);
  }
  const kept = [...keys.entries()].sort((a, b) => sum(b[1]) - sum(a[1])).slice(0, 8);
  return { names: kept.map(([k]) => k), columns: [xs.map((x) => x / 1000), ...kept.map(([, c]) => c)] };
}

/** A timestamp of the rows' JSON (ISO 8601 without a zone: UTC) in milliseconds. */
function millis(v) {
  if (typeof v === "number") return v;
  return Date.parse(/Z|[+-]\d\d:?\d\d$/.test(v) ? v : `${v}Z`);
}

function sum(values) { return values.reduce((s, v) => s + (v || 0), 0); }

/** The top rows by `y` as bars over the categories of `x`. */
function bars(rows, xi, yi) {
  return { names: ["bars"], labels: rows.map((r) => String(r[xi])), columns: [rows.map((_, i) => i), rows.map((r) => Number(r[yi]))] };
}

function chartOptions(data, series, y, width, labels) {
  const s = [{}];
  data.names.forEach((n, i) => s.push({
    label: series ? (n || y) : y, stroke: PALETTE[i % PALETTE.length],
    fill: series ? undefined : PALETTE[i % PALETTE.length] + "99",
    paths: series ? undefined : uPlot.paths.bars({ size: [0.6, 64] }),
    points: { show: false }, width: 2,
  }));
  const axis = { stroke: "currentColor", grid: { stroke: "rgba(128,128,128,0.2)" }, ticks: { stroke: "rgba(128,128,128,0.4)" } };
  return {
    width, height: 260, series: s,
    scales: { x: { time: series } },
    axes: series
      ? [axis, { ...axis, label: y, size: 80 }]
      // The categories of the latest data (the order of a top-N changes as it updates).
      : [{ ...axis, values: (_, ticks) => ticks.map((t) => labels.current[t] ?? "") }, { ...axis, label: y, size: 80 }],
    legend: { show: true },
  };
}

/**
 * The view's operators left to right, as EXPLAIN lists them, with rows in and out per
 * second and the time per batch over the last tick (`before`: the previous figures);
 * the slowest operator is marked.
 */
function drawGraph(box, v, before) {
  const now = performance.now() / 1000;
  const dt = before ? Math.max(0.001, now - before.t) : null;
  const ops = v.operators.map((op, i) => {
    const old = before && before.ops[i] && before.ops[i].name === op.name ? before.ops[i] : null;
    const rate = (key) => (old ? (op[key] - old[key]) / dt : null);
    let perBatch = null;
    if (op.seconds !== null && op.batches) {
      const dBatches = old && old.batches !== null ? op.batches - old.batches : 0;
      perBatch = dBatches > 0 ? (op.seconds - old.seconds) / dBatches : op.seconds / op.batches;
    }
    return { ...op, inRate: rate("rows_in"), outRate: rate("rows_out"), perBatch };
  });
  const timed = ops.filter((o) => o.perBatch !== null);
  const slowest = timed.length > 1 ? timed.reduce((a, b) => (b.perBatch > a.perBatch ? b : a)) : null;
  box.replaceChildren(h("ol", { class: "operators" }, ops.map((op) => h("li", {
    class: `operator${op === slowest ? " slowest" : ""}`, "data-operator": op.name, title: op.detail,
  },
  h("strong", {}, op.name),
  op === slowest ? h("span", { class: "badge failed" }, " slowest") : null,
  h("div", { class: "muted detail" }, op.detail.length > 60 ? op.detail.slice(0, 60) + "…" : op.detail),
  h("dl", {},
    h("dt", {}, "rows in/s"), h("dd", { "data-figure": "in" }, op.inRate === null ? "…" : fmt(op.inRate)),
    h("dt", {}, "rows out/s"), h("dd", { "data-figure": "out" }, op.outRate === null ? "…" : fmt(op.outRate)),
    h("dt", {}, "per batch"), h("dd", { "data-figure": "batch" }, op.perBatch === null ? "—" : `${(op.perBatch * 1000).toFixed(3)} ms`),
    op.state_bytes !== undefined ? [h("dt", {}, "state"), h("dd", {}, bytes(op.state_bytes))] : null,
    op.open_windows !== undefined ? [h("dt", {}, "open windows"), h("dd", {}, op.open_windows)] : null,
    op.late_rows !== undefined ? [h("dt", {}, "late rows"), h("dd", {}, op.late_rows)] : null)))));
  return { t: now, ops: v.operators };
}

function fmt(n) {
  if (n === undefined || n === null) return "";
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)} M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)} k`;
  return n.toFixed(n < 10 ? 1 : 0);
}

// ---- sources ----

/** A form made from a connector's own option list (GET /api/v1/connectors). */
function connectorForm(kind, catalog, refreshCatalog) {
  const id = (x) => `${kind}-form-${x}`;
  const box = h("div", { class: "form", id: `${kind}-form` });
  const connector = h("select", { id: id("connector") });
  const name = h("input", { id: id("name"), placeholder: kind === "source" ? "orders" : "orders_out", size: 18 });
  const from = h("select", { id: id("from") });
  const columns = h("textarea", { id: id("columns"), rows: 4, cols: 60, spellcheck: "false",
    placeholder: "id BIGINT,\nts TIMESTAMP,\nWATERMARK FOR ts AS ts - INTERVAL '2' SECOND" });
  const fields = h("div", { class: "fields" });
  const extra = h("textarea", { id: id("extra"), rows: 2, cols: 60, spellcheck: "false", placeholder: "properties.security.protocol = SASL_SSL" });
  const sql = h("pre", { id: id("sql"), "aria-live": "polite" });
  const result = h("div", { id: id("result"), role: "status" });
  let connectors = [];
  let inputs = new Map();

  const quote = (v) => `'${String(v).replace(/'/g, "''")}'`;
  function options() {
    const o = { connector: connector.value };
    for (const [n, input] of inputs) if (input.value.trim() !== "") o[n] = input.value.trim();
    for (const line of extra.value.split("\n")) {
      const m = line.match(/^\s*([A-Za-z0-9_.]+)\s*=\s*(?:'((?:[^']|'')*)'|(.*?))\s*$/);
      if (m) o[m[1]] = m[2] !== undefined ? m[2].replace(/''/g, "'") : m[3];
    }
    return o;
  }
  function statement() {
    const c = connectors.find((x) => x.name === connector.value);
    if (!c) return "";
    const withs = Object.entries(options()).map(([k, v]) => `${k} = ${quote(v)}`).join(", ");
    const n = name.value.trim() || "name";
    if (kind === "sink") return `CREATE SINK ${n} FROM ${from.value || "view"} WITH (${withs})`;
    const cols = c.declares_columns && columns.value.trim() ? ` (\n  ${columns.value.trim().split("\n").join("\n  ")}\n)` : "";
    return `CREATE SOURCE ${n}${cols} WITH (${withs})`;
  }
  const update = () => { sql.textContent = statement(); };

  function build() {
    const c = connectors.find((x) => x.name === connector.value);
    inputs = new Map();
    fields.replaceChildren(...(c ? c.options : []).map((o) => {
      const help = h("small", { id: id(`${o.name}-help`), class: "muted" }, o.doc, o.default ? ` Default: ${o.default}.` : "");
      const input = o.kind === "choice"
        ? h("select", { id: id(o.name), "aria-describedby": help.id },
          h("option", { value: "" }, o.required ? "choose…" : `(default${o.default ? `: ${o.default}` : ""})`),
          ...o.choices.map((x) => h("option", { value: x }, x)))
        : h("input", { id: id(o.name), placeholder: o.default || "", "aria-describedby": help.id, inputmode: o.kind === "number" ? "numeric" : undefined });
      input.addEventListener("input", update);
      input.addEventListener("change", update);
      inputs.set(o.name, input);
      return h("div", { class: "field" }, h("label", { for: input.id }, o.name, o.required ? " *" : ""), input, help);
    }));
    columns.parentElement.hidden = !(c && c.declares_columns);
    extra.parentElement.hidden = !(c && c.passes_through);
    if (c && c.passes_through) extra.setAttribute("aria-description", c.passes_through);
    update();
  }

  async function test() {
    result.className = "muted";
    result.textContent = "trying…";
    try {
      const { json } = await api(`api/v1/connectors/${kind}/${connector.value}/test`, { method: "POST", body: { options: options() } });
      result.className = "ok";
      result.textContent = json.message;
    } catch (e) {
      result.className = "error";
      result.textContent = e.message;
    }
  }
  async function create() {
    result.className = "muted";
    result.textContent = "creating…";
    try {
      const { json } = await api("api/v1/sql", { method: "POST", body: { sql: statement() } });
      result.className = "ok";
      result.textContent = json.message;
      await refreshCatalog();
    } catch (e) {
      result.className = "error";
      result.textContent = `${e.status}: ${e.message}`;
    }
  }

  api("api/v1/connectors").then(({ json }) => {
    connectors = json.connectors.filter((c) => c.kind === kind);
    connector.replaceChildren(...connectors.map((c) => h("option", { value: c.name }, c.name)));
    build();
  }).catch((e) => { result.className = "error"; result.textContent = `cannot list the connectors: ${e.message}`; });
  connector.addEventListener("change", build);
  for (const x of [name, columns, extra, from]) x.addEventListener("input", update);
  from.addEventListener("change", update);
  let shownViews = "";
  const fillViews = () => {
    const names = catalog.views.map((v) => v.name).join();
    if (names === shownViews) return;
    shownViews = names;
    const keep = from.value;
    from.replaceChildren(...catalog.views.map((v) => h("option", { value: v.name, selected: v.name === keep }, v.name)));
  };
  box.append(
    h("div", { class: "toolbar" }, labelled("connector", connector), labelled("name", name),
      kind === "sink" ? labelled("from view", from) : null),
    h("div", {}, h("label", { for: columns.id }, "columns (and watermark)"), h("br"), columns),
    fields,
    h("div", {}, h("label", { for: extra.id }, "other options, one per line"), h("br"), extra),
    h("p", { class: "muted" }, "The statement it will run:"), sql,
    h("div", { class: "toolbar" },
      h("button", { id: id("test"), onclick: test }, "Test connection"),
      h("button", { id: id("create"), class: "primary", onclick: create }, `Create ${kind}`)),
    result);
  if (kind === "sink") fillViews();
  return { box, fillViews };
}

export function sourcesPage(main, catalog, refreshCatalog) {
  const list = h("div", { id: "source-list" });
  const letters = h("div", { id: "dead-letters" });
  const record = h("pre", { id: "dead-letter-record", class: "record", hidden: true, tabindex: "-1" });
  const lettersError = h("div", { class: "error", hidden: true, role: "alert" });
  const bySource = h("select", { id: "dl-source" });
  const byView = h("select", { id: "dl-view" });
  let shown = 50;
  let shownLetters = ""; // what the table shows, to rebuild it only on a change
  const sourceForm = connectorForm("source", catalog, refreshCatalog);
  const sinkForm = connectorForm("sink", catalog, refreshCatalog);
  main.replaceChildren(
    h("h1", {}, "Sources"), list,
    h("details", { id: "new-source" }, h("summary", {}, h("h2", { class: "inline" }, "Create a source")), sourceForm.box),
    h("details", { id: "new-sink" }, h("summary", {}, h("h2", { class: "inline" }, "Create a sink")), sinkForm.box),
    h("section", { "aria-label": "Dead letters" }, h("h2", {}, "Dead letters ", h("span", { id: "dl-total", class: "muted" })),
      h("div", { class: "toolbar" }, labelled("source", bySource), labelled("view", byView)),
      lettersError, letters,
      h("button", { id: "dl-more", onclick: () => { shown += 50; refreshLetters(); } }, "Show older"),
      record));
  const sparks = new Map();

  function fillFilter(select, names) {
    if (select.dataset.names === names.join()) return;
    select.dataset.names = names.join();
    const keep = select.value;
    select.replaceChildren(h("option", { value: "" }, "all"), ...names.map((n) => h("option", { value: n, selected: n === keep }, n)));
  }

  function render() {
    const now = Date.now();
    list.replaceChildren(h("table", { class: "rows" },
      h("thead", {}, h("tr", {}, ["name", "connector", "status", "events/s (5 min)", "records", "watermark", "behind now", "dead letters", "lag"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, catalog.sources.map((s) => {
        // The server samples every source's rate: the last five minutes at once.
        const r = { t: s.rate_history.map(([t]) => t / 1000), v: s.rate_history.map(([, v]) => v) };
        const spark = h("div", { class: "spark", "data-source": s.name });
        const lag = (s.partitions || []).map((p) => `${p.partition}: ${p.lag ?? "?"}`).join(", ");
        const row = h("tr", { "data-source": s.name },
          h("td", {}, s.name), h("td", {}, s.connector),
          h("td", {}, h("span", { class: `badge ${s.status}` }, s.waiting ? `${s.status}: ${s.waiting}` : s.status)),
          h("td", {}, h("span", { class: "rate" }, r && r.v.length ? fmt(r.v[r.v.length - 1]) : "…"), spark),
          h("td", {}, s.records_in), h("td", {}, time(s.watermark_ms)),
          h("td", {}, s.watermark_ms ? duration(Math.max(0, (now - s.watermark_ms) / 1000)) : ""),
          h("td", {}, s.dead_letters), h("td", { class: "lag" }, lag || "—"));
        if (r && r.t.length > 1) {
          const old = sparks.get(s.name);
          if (old) old.destroy();
          sparks.set(s.name, new uPlot({
            width: 140, height: 32, cursor: { show: false }, legend: { show: false },
            axes: [{ show: false }, { show: false }], scales: { x: { time: false } },
            series: [{}, { stroke: PALETTE[0], fill: PALETTE[0] + "33", width: 1.5, points: { show: false } }],
          }, [r.t, r.v], spark));
        }
        return row;
      }))));
    fillFilter(bySource, catalog.sources.map((s) => s.name));
    fillFilter(byView, catalog.views.map((v) => v.name));
  }

  async function refreshLetters() {
    const q = new URLSearchParams({ limit: shown });
    if (bySource.value) q.set("source", bySource.value);
    if (byView.value) q.set("view", byView.value);
    const { json } = await api(`api/v1/dead-letters?${q}`);
    document.getElementById("dl-total").textContent = `(${json.total} in all; newest first)`;
    const key = `${q}|${json.total}|${json.dead_letters.map((d) => d.id).join()}`;
    if (key === shownLetters) return;
    shownLetters = key;
    letters.replaceChildren(h("table", { class: "rows" },
      h("thead", {}, h("tr", {}, ["id", "source", "view", "position", "reason", "record"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, json.dead_letters.slice().reverse().map((d) => h("tr", {},
        h("td", {}, d.id), h("td", {}, d.source), h("td", {}, d.view || ""), h("td", {}, d.position ?? ""),
        h("td", {}, d.reason),
        h("td", {}, h("button", { class: "link", "data-letter": d.id, onclick: () => {
          record.hidden = false;
          record.textContent = `#${d.id} from ${d.source}${d.view ? ` (view ${d.view})` : ""}\nreason: ${d.reason}\n\n${d.raw}`;
          record.focus();
        } }, d.raw.length > 80 ? d.raw.slice(0, 80) + "…" : d.raw)))))));
  }
  bySource.addEventListener("change", refreshLetters);
  byView.addEventListener("change", refreshLetters);
  const stop = every(2000, () => {
    render();
    sinkForm.fillViews();
    refreshLetters().then(() => showError(lettersError, null), (e) => showError(lettersError, e));
  });
  return { leave() { stop(); for (const s of sparks.values()) s.destroy(); } };
}

// ---- plugins ----

export function pluginsPage(main, catalog, refreshCatalog) {
  const name = h("input", { id: "plugin-name", placeholder: "my_plugin", size: 18 });
  const file = h("input", { id: "plugin-file", type: "file", accept: ".wasm,application/wasm" });
  const error = h("div", { id: "plugin-error", class: "error", hidden: true, role: "alert" });
  const result = h("div", { id: "plugin-result", class: "muted", role: "status" });
  const list = h("div", { id: "plugin-list" });
  const drop = h("div", { id: "plugin-drop", class: "drop", tabindex: "0", "aria-label": "Drop a .wasm file here to upload it" },
    labelled("name", name), labelled("file", file),
    h("button", { id: "plugin-upload", class: "primary", onclick: () => upload(file.files[0]) }, "Upload"),
    h("span", { class: "muted" }, "or drop a .wasm file here"));
  main.replaceChildren(h("h1", {}, "Plugins"), drop, error, result, list);

  async function upload(f) {
    showError(error, null);
    result.textContent = "";
    if (!f) { showError(error, new Error("choose a .wasm file first")); return; }
    const n = name.value.trim() || f.name.replace(/\.wasm$/, "").replace(/[^a-z0-9_]/gi, "_").toLowerCase();
    name.value = n;
    result.textContent = `uploading ${f.name} as ${n}…`;
    try {
      const { json } = await api(`api/v1/plugins?name=${encodeURIComponent(n)}`, { method: "POST", body: await f.arrayBuffer(), raw: true });
      result.textContent = `${json.name} version ${json.version} loaded: ${exportsOf(json)}`;
      // The next file is another plugin unless named again.
      name.value = "";
      await refreshCatalog();
      render();
    } catch (e) {
      result.textContent = "";
      showError(error, e);
    }
  }
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); upload(e.dataTransfer.files[0]); });

  let shownPlugins = "";
  function render() {
    const key = JSON.stringify(catalog.plugins);
    if (key === shownPlugins) return;
    shownPlugins = key;
    list.replaceChildren(h("table", { class: "rows", id: "plugins" },
      h("thead", {}, h("tr", {}, ["name", "version", "versions (sha-256)", "exports", "status", "calls", "rows", "failures", "last failure", "used by", ""].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, catalog.plugins.map((p) => h("tr", { "data-plugin": p.name },
        h("td", {}, p.name), h("td", {}, `${p.version} (${p.plugin_version})`),
        h("td", {}, h("ul", { class: "versions" }, p.versions.map((v) => h("li", { title: v.sha256, "data-version": v.version },
          `v${v.version} `, h("code", {}, v.sha256.slice(0, 12)), ` ${bytes(v.size_bytes)}`)))),
        h("td", {}, exportsOf(p)),
        h("td", {}, h("span", { class: `badge ${p.status}` }, p.reason ? `${p.status}: ${p.reason}` : p.status)),
        h("td", {}, p.calls), h("td", {}, p.rows), h("td", {}, p.failures), h("td", {}, p.last_failure || ""),
        h("td", {}, p.used_by.join(", ")),
        h("td", {}, h("button", { class: "small", "aria-label": `Delete plugin ${p.name}`, onclick: () => remove(p) }, "Delete")))))));
  }

  async function remove(p) {
    const users = p.used_by.length ? `\n\nUsed by ${p.used_by.join(", ")}: drop ${p.used_by.length === 1 ? "that view" : "those views"} first.` : "";
    if (!confirmAction(`Delete plugin ${p.name}?${users}`)) return;
    try {
      await api(`api/v1/plugins/${encodeURIComponent(p.name)}`, { method: "DELETE" });
      await refreshCatalog();
      render();
    } catch (e) {
      showError(error, e);
    }
  }
  const stop = every(2000, render);
  return { leave: stop };
}

function exportsOf(p) {
  return [
    ...p.functions.map((f) => `${f.name}(${f.args.join(", ")}) -> ${f.returns}`),
    ...p.transforms.map((t) => `transform ${t.name}: ${t.output}`),
  ].join("; ");
}

// ---- health and checkpoints ----

export function healthPage(main, catalog, refreshCatalog) {
  const facts = h("div", { class: "facts", id: "health-facts" });
  const warnings = h("ul", { id: "warnings", class: "warnings" });
  const chartBox = h("div", { id: "checkpoint-chart", class: "chart" });
  const table = h("div", { id: "checkpoint-list" });
  const result = h("div", { id: "checkpoint-result", role: "status" });
  main.replaceChildren(
    h("h1", {}, "Health"), facts,
    h("section", { "aria-label": "Warnings" }, h("h2", {}, "Warnings"), warnings),
    h("section", { "aria-label": "Checkpoints" }, h("h2", {}, "Checkpoints"),
      h("div", { class: "toolbar" }, h("button", { id: "take-checkpoint", class: "primary", onclick: take }, "Take a checkpoint now"), result),
      chartBox, table));
  let chart = null;
  let lastCpu = null;

  async function take() {
    result.className = "muted";
    result.textContent = "taking a checkpoint…";
    try {
      const { json } = await api("api/v1/checkpoints", { method: "POST" });
      result.className = "ok";
      result.textContent = `checkpoint #${json.epoch} written: ${bytes(json.bytes)} in ${json.duration_ms} ms`;
      await refreshCatalog();
      tick();
    } catch (e) {
      result.textContent = `${e.status || ""} ${e.message}`;
      result.className = "error";
    }
  }

  async function tick() {
    const { json } = await api("api/v1/health");
    let cpu = "";
    if (lastCpu) cpu = `${(100 * (json.cpu_seconds - lastCpu[1]) / Math.max(0.001, json.uptime_s - lastCpu[0])).toFixed(0)} % of a core`;
    lastCpu = [json.uptime_s, json.cpu_seconds];
    facts.replaceChildren(
      fact("uptime", duration(json.uptime_s)), fact("memory", bytes(json.memory_bytes)),
      fact("peak memory", bytes(json.peak_memory_bytes)), fact("CPU", cpu || "measuring…"),
      fact("CPU time", `${json.cpu_seconds.toFixed(1)} s`), fact("cores", json.cores), fact("version", json.version));
    warnings.replaceChildren(...(json.warnings.length
      ? json.warnings.map((w) => h("li", { class: "error" }, w))
      : [h("li", { class: "muted" }, "none")]));
    const c = catalog.checkpoints;
    if (!c) return;
    const hist = c.history || [];
    const data = [hist.map((x) => x.started_ms / 1000), hist.map((x) => x.bytes), hist.map((x) => x.duration_ms)];
    if (!chart && hist.length) {
      const axis = { stroke: "currentColor", grid: { stroke: "rgba(128,128,128,0.2)" } };
      chart = new uPlot({
        width: Math.max(300, chartBox.clientWidth - 8), height: 220,
        series: [{}, { label: "bytes", stroke: PALETTE[0], scale: "bytes", points: { size: 4 } },
          { label: "duration ms", stroke: PALETTE[1], scale: "ms", points: { size: 4 } }],
        axes: [axis, { ...axis, scale: "bytes", label: "bytes" }, { ...axis, scale: "ms", side: 1, label: "ms", grid: { show: false } }],
      }, data, chartBox);
    } else if (chart) {
      chart.setData(data);
    }
    chartBox.dataset.points = String(hist.length);
    table.replaceChildren(h("table", { class: "rows" },
      h("caption", {}, `on disk (the newest ${c.keep} are kept), every ${c.interval_ms / 1000} s${c.restored_from ? `; restored from #${c.restored_from}` : ""}`),
      h("thead", {}, h("tr", {}, ["epoch", "taken", "size", "duration", "sources"].map((x) => h("th", { scope: "col" }, x)))),
      h("tbody", {}, c.checkpoints.map((x) => h("tr", {},
        h("td", {}, x.epoch), h("td", {}, time(x.created_ms)), h("td", {}, bytes(x.bytes)), h("td", {}, `${x.duration_ms} ms`),
        h("td", {}, x.sources.map((s) => s.name).join(", ")))))));
  }
  const stop = every(2000, () => tick().catch((e) => { result.textContent = e.message; }));
  return { leave() { stop(); if (chart) chart.destroy(); } };
}
