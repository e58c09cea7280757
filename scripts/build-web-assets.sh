#!/usr/bin/env bash
# Rebuild the console's third-party bundle (CodeMirror 6, uPlot) into web/assets/vendor/.
# The output is checked in: `cargo build` needs neither npm nor the network. Run this only
# to change a library's version (edit web/console-deps/package.json first).
set -euo pipefail
cd "$(dirname "$0")/../web/console-deps"
npm ci --no-audit --no-fund --loglevel=error
out=../assets/vendor
mkdir -p "$out"
npx esbuild entry.mjs --bundle --minify --format=iife --global-name=WeirVendor \
  --legal-comments=none --target=es2020 --outfile="$out/vendor.js"
cp node_modules/uplot/dist/uPlot.min.css "$out/uplot.css"
# Versions and licences of what the bundle holds, from the installed packages.
node -e '
const fs = require("fs");
const lines = ["# Third-party code in vendor.js and uplot.css", "",
  "Rebuilt by `scripts/build-web-assets.sh` from web/console-deps/package-lock.json.", "",
  "| package | version | licence |", "| --- | --- | --- |"];
const texts = [];
const seen = new Set();
function walk(dir) {
  for (const name of fs.readdirSync(dir)) {
    if (name.startsWith(".")) continue;
    const p = dir + "/" + name;
    if (name.startsWith("@")) { walk(p); continue; }
    const pkg = JSON.parse(fs.readFileSync(p + "/package.json", "utf8"));
    if (pkg.name === "esbuild" || pkg.name.startsWith("@esbuild/") || seen.has(pkg.name)) continue;
    seen.add(pkg.name);
    lines.push(`| ${pkg.name} | ${pkg.version} | ${pkg.license} |`);
    const lic = fs.readdirSync(p).find((f) => /^licen[sc]e/i.test(f));
    if (lic) texts.push(`## ${pkg.name} ${pkg.version}\n\n` + fs.readFileSync(p + "/" + lic, "utf8").trim());
  }
}
walk("node_modules");
fs.writeFileSync(process.argv[1] + "/README.md", lines.join("\n") + "\n");
fs.writeFileSync(process.argv[1] + "/LICENSES.md", "# Licences of the bundled packages\n\n" + texts.join("\n\n") + "\n");
' "$out"
ls -l "$out"
