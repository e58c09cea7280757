// The health page: the process's uptime, memory and CPU, warnings, and checkpoints
// (history chart, take one now).
import { h, api, time, bytes, duration, every, fact, PALETTE } from "./ui.js";

const uPlot = window.WeirVendor.uPlot;

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
