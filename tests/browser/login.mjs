// The console on a server that needs tokens: it asks for one, then works with it, and a
// reader's token cannot drop a view. Usage: node login.mjs URL READER_TOKEN
import { chromium } from "playwright-core";

const [url, reader] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
let step = "start";
const fail = async (msg) => { console.error(`${step}: ${msg}`); await browser.close(); process.exit(1); };
const T = { timeout: 30000 };
try {
  const page = await browser.newPage();
  const dialogs = [];
  page.on("dialog", (d) => { dialogs.push(d.message()); d.accept(); });
  step = "the page asks for a token";
  await page.goto(url);
  await page.waitForSelector("#login #login-token", T);
  if (await page.$("#catalog details[data-name=v]")) await fail("the catalog showed without a token");
  step = "with a reader's token the catalog and a view's rows show";
  await page.fill("#login-token", reader);
  await page.click("#login button[type=submit]");
  await page.waitForSelector("#catalog details[data-kind=view][data-name=v]", T);
  await page.goto(`${url}#/view/v`);
  await page.waitForSelector("#view-table td:text-is('7')", T);
  step = "the event stream reads with the cookie";
  const streamed = await page.evaluate(() => new Promise((resolve) => {
    const events = new EventSource("api/v1/views/v/stream");
    events.onopen = () => { events.close(); resolve(true); };
    events.onerror = () => { events.close(); resolve(false); };
  }));
  if (!streamed) await fail("the stream refused the cookie");
  step = "a reader may not drop a view";
  await page.click("#catalog details[data-kind=view][data-name=v] summary");
  await page.click("#catalog details[data-kind=view][data-name=v] button:has-text('Drop')");
  for (let i = 0; i < 50 && !dialogs.some((d) => d.startsWith("403")); i++) await page.waitForTimeout(100);
  if (!dialogs.some((d) => d.startsWith("403") && d.includes("admin"))) await fail(`dialogs: ${dialogs}`);
  if (!(await page.$("#catalog details[data-kind=view][data-name=v]"))) await fail("the view is gone");
  console.log(JSON.stringify({ ok: true }));
} catch (e) {
  await fail(String(e));
}
await browser.close();
