// What the console takes from CodeMirror 6 and uPlot, bundled into one script by
// scripts/build-web-assets.sh (the page reads it as the global `WeirVendor`).
export { EditorView, keymap, placeholder } from "@codemirror/view";
export { EditorState, Compartment } from "@codemirror/state";
export { basicSetup } from "codemirror";
export { sql, StandardSQL, PostgreSQL } from "@codemirror/lang-sql";
export { setDiagnostics, lintGutter } from "@codemirror/lint";
export { acceptCompletion, startCompletion, completionStatus } from "@codemirror/autocomplete";
export { oneDark } from "@codemirror/theme-one-dark";
export { default as uPlot } from "uplot";
