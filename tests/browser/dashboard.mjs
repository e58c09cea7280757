// Drives the weir dashboard in headless Chromium: the status tables fill from the API,
// the live table receives new rows over SSE, and the SQL box shows results and errors.
// Usage: node dashboard.mjs http://127.0.0.1:PORT   (exit 0 when every check passes)
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
  console.log(JSON.stringify({ ok: true, live_rows: live.length, error }));
} catch (e) {
  await fail(String(e));
}
await browser.close();
