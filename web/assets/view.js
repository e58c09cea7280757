// A view's page: its current rows (sorted, paged, downloadable), a live chart and its
// operator graph.
import { h, api, rowsTable, showError, bytes, every, labelled, fact, fmt, PALETTE } from "./ui.js";

const uPlot = window.WeirVendor.uPlot;
const PAGE_SIZES = [25, 50, 100, 500];
const CHART_ROWS = 5000;
const NUMERIC = /^(Int|UInt|Float|Decimal)/;
const TEMPORAL = /^(Timestamp|Date)/;

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
    events.addEventListener("removed", () => { state.dirty = true; });
    events.addEventListener("lagged", () => { state.dirty = true; });
    // The server ends a stream that lagged; the browser reconnects: refetch then too.
    events.addEventListener("open", () => { state.dirty = true; });
  };
  follow();
  consistency.addEventListener("change", () => { state.consistency = consistency.value; state.dirty = true; follow(); tick(); });
  pageSize.addEventListener("change", () => { state.limit = Number(pageSize.value); state.offset = 0; state.dirty = true; tick(); });
  for (const p of [xPick, yPick, byPick]) p.addEventListener("change", () => { state.dirty = true; tick(); });
  const stop = every(1000, tick);
  return { leave() { stop(); if (events) events.close(); if (chart) chart.destroy(); } };
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
