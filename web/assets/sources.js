// The sources page: rates, watermarks and lag, forms that create sources and sinks
// from each connector's option list, and the dead letters.
import { h, api, showError, time, duration, every, labelled, fmt, PALETTE } from "./ui.js";

const uPlot = window.WeirVendor.uPlot;

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
          h("td", {}, h("span", { class: `badge ${s.status}` }, (s.waiting || s.error) ? `${s.status}: ${s.waiting || s.error}` : s.status)),
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
