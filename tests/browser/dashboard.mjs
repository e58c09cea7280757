// Drives the weir dashboard in headless Chromium: the status tables fill from the API,
// the live table receives new rows over SSE, and the SQL box shows results and errors.
// Plugins: uploads through the file picker (a refusal, a plugin, a failing plugin).
// Usage: node dashboard.mjs http://127.0.0.1:PORT DIR   (DIR has currency.wasm,
// not-wasm.txt and trap.wasm; exit 0 when every check passes)
import { chromium } from "playwright-core";

const url = process.argv[2];
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const browser = await chromium.launch({
  executablePath,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const fail = async (msg) => { console.error(msg); await browser.close(); process.exit(1); };
try {
  const page = await browser.newPage();
  await page.goto(url);
  await page.waitForSelector("#sources td:text-is('nexmark')", { timeout: 20000 });
  await page.waitForSelector("#views td:text-is('bids_per_channel')", { timeout: 20000 });

  // The live table follows the first view (bids_per_channel) and receives rows over SSE.
  await page.waitForSelector("#live th:text-is('window_start')", { timeout: 20000 });
  await page.waitForSelector("#live tr.new", { timeout: 30000 });
  const live = await page.$$eval("#live tbody tr", (rows) => rows.map((r) => r.innerText));
  if (!live.some((r) => /Google|Facebook|Baidu|Apple/.test(r))) await fail(`no hot channel rows: ${live}`);

  // The SQL box runs a statement and shows its rows.
  await page.fill("#sql", "SELECT channel, sum(bids) AS n FROM bids_per_channel GROUP BY channel ORDER BY channel");
  await page.click("#run");
  await page.waitForSelector("#sql-result td:text-is('Apple')", { timeout: 20000 });

  // ... and a helpful error for bad SQL.
  await page.fill("#sql", "SELECT nope FROM bids_per_channel");
  await page.click("#run");
  await page.waitForSelector("#sql-error:has-text('400')", { timeout: 20000 });
  const error = await page.textContent("#sql-error");
  if (!error.includes("nope")) await fail(`error does not name the column: ${error}`);
  // Plugins: a refused upload shows why; an accepted one shows its exports and joins
  // the list; one that traps on every batch is marked failed and its view paused.
  const files = process.argv[3];
  await page.fill("#plugin-name", "broken");
  await page.setInputFiles("#plugin-file", `${files}/not-wasm.txt`);
  await page.click("#plugin-upload");
  await page.waitForSelector("#plugin-error:has-text('not a WebAssembly module')", { timeout: 20000 });
  await page.fill("#plugin-name", "currency");
  await page.setInputFiles("#plugin-file", `${files}/currency.wasm`);
  await page.click("#plugin-upload");
  await page.waitForSelector("#plugin-result:has-text('to_eur(Int64) -> Float64')", { timeout: 30000 });
  await page.waitForSelector("#plugins td:text-is('currency')", { timeout: 20000 });
  await page.fill("#plugin-name", "flaky");
  await page.setInputFiles("#plugin-file", `${files}/trap.wasm`);
  await page.click("#plugin-upload");
  await page.waitForSelector("#plugin-result:has-text('crash(Int64) -> Int64')", { timeout: 30000 });
  await page.fill("#sql", "CREATE MATERIALIZED VIEW flaky_view AS SELECT crash(auction) AS c FROM bids");
  await page.click("#run");
  await page.waitForSelector("#plugins td:has-text('failed: 3 failures in a row')", { timeout: 30000 });
  await page.waitForSelector("#views td:has-text('paused: plugin flaky is failed')", { timeout: 20000 });
  const plugins = await page.$$eval("#plugins tbody tr", (rows) => rows.map((r) => r.innerText));
  // Checkpoints run every 10 s by default: the header shows the newest and its age.
  await page.waitForSelector("#checkpoint:has-text('last checkpoint #')", { timeout: 30000 });
  const checkpoint = await page.textContent("#checkpoint");
  if (!/s ago, [0-9.]+ KiB/.test(checkpoint)) await fail(`checkpoint line: ${checkpoint}`);
  console.log(JSON.stringify({ ok: true, live_rows: live.length, error, plugins, checkpoint }));
} catch (e) {
  await fail(String(e));
}
await browser.close();
