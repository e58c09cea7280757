// The plugins page: upload (picker or drop), versions, exports, health; delete.
import { h, api, showError, confirmAction, bytes, every, labelled } from "./ui.js";

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
