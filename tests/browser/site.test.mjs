// The built site works in a real browser: navigation, search, diagrams, no console errors.
//
// Debian's Chromium is driven by playwright-core (reference/js/tools/chromium.mjs; no
// browser download). The site is built with `mkdocs build --strict` and served from a
// loopback HTTP server. Screenshots of the home page and a message schema page go to
// $UNISOCK_SCREENSHOTS (default: a temporary directory).
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, mkdirSync, readFileSync, statSync } from "node:fs";
import { createServer } from "node:http";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { launchChromium } from "../../reference/js/tools/chromium.mjs";

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const python = process.env.UNISOCK_PYTHON || path.join(repo, ".venv", "bin", "python");
const timeout = 20000 * Number(process.env.UNISOCK_TIME_SCALE || "1");
const shots = process.env.UNISOCK_SCREENSHOTS || mkdtempSync(path.join(os.tmpdir(), "site-shots-"));
mkdirSync(shots, { recursive: true });
const TYPES = { ".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".json": "application/json", ".svg": "image/svg+xml", ".png": "image/png" };

// The theme replaces each <pre class="mermaid"> source with a <div class="mermaid"> holding the
// drawing in a closed shadow root, so "drawn" is: no source left, and every diagram has a height.
const drawn = () =>
  document.querySelector("pre.mermaid") === null &&
  Array.from(document.querySelectorAll("div.mermaid")).every((el) => el.getBoundingClientRect().height > 50);

let server;
let base;
let browser;
let page;
const errors = [];

before(async () => {
  const site = mkdtempSync(path.join(os.tmpdir(), "site-"));
  const built = spawnSync(python, ["-m", "mkdocs", "build", "--strict", "-q", "-d", site], {
    cwd: repo,
    env: { ...process.env, NO_MKDOCS_2_WARNING: "1" },
    encoding: "utf8",
  });
  assert.equal(built.status, 0, built.stderr.slice(-4000));
  server = createServer((request, response) => {
    let file = path.join(site, decodeURIComponent(new URL(request.url, "http://x").pathname));
    try {
      if (statSync(file).isDirectory()) file = path.join(file, "index.html");
      response.writeHead(200, { "content-type": TYPES[path.extname(file)] ?? "application/octet-stream" });
      response.end(readFileSync(file));
    } catch {
      response.writeHead(404, { "content-type": "text/html" });
      response.end("<title>404</title>");
    }
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  base = `http://127.0.0.1:${server.address().port}/`;
  browser = await launchChromium();
  page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.on("console", (m) => m.type() === "error" && errors.push(`console: ${m.text()}`));
  page.on("pageerror", (e) => errors.push(`exception: ${e.message}`));
  // A request cut short by the next navigation is not a fault of the page.
  page.on("requestfailed", (r) => r.failure()?.errorText !== "net::ERR_ABORTED" && errors.push(`request failed: ${r.url()}`));
  page.on("response", (r) => r.status() >= 400 && errors.push(`${r.status()}: ${r.url()}`));
});

after(async () => {
  await browser?.close();
  server?.close();
});

async function open(url) {
  errors.length = 0;
  await page.goto(url, { waitUntil: "load" });
}

test("home page renders its diagram and is captured", async () => {
  await open(base);
  assert.equal((await page.locator("h1").first().textContent()).replace("¶", "").trim(), "Unisock");
  assert.equal(await page.locator(".mermaid").count(), 1);
  await page.waitForFunction(drawn, null, { timeout });
  await page.screenshot({ path: path.join(shots, "home.png") });
  assert.ok(statSync(path.join(shots, "home.png")).size > 10000);
  assert.deepEqual(errors, []);
});

test("every page in the navigation loads without console errors", async () => {
  await open(base);
  const links = await page.$$eval("nav.md-nav--primary a.md-nav__link[href]", (as) => as.map((a) => a.href.split("#")[0]));
  const pages = [...new Set(links.filter((link) => link.startsWith(base)))].sort();
  assert.ok(pages.length >= 40, `${pages.length} pages`);
  const problems = [];
  for (const url of pages) {
    await open(url);
    if ((await page.title()).includes("404")) problems.push(`${url}: not found`);
    if ((await page.locator(".mermaid").count()) > 0) {
      await page.waitForFunction(drawn, null, { timeout }).catch(() => problems.push(`${url}: a diagram was not drawn`));
    }
    problems.push(...errors.map((error) => `${url}: ${error}`));
  }
  assert.deepEqual(problems, []);
});

test("search finds backoff", async () => {
  await open(base);
  await page.$eval('label[for="__search"]', (label) => label.click());
  // The theme reads the query on a key release (and once when its search worker is ready), not
  // on an input event, so the query is typed key by key: `fill` alone goes unanswered whenever
  // the worker is ready first.
  await page.locator("input.md-search__input").pressSequentially("backoff");
  await page.locator(".md-search-result__item").first().waitFor({ timeout });
  const hrefs = await page.$$eval(".md-search-result__item a", (as) => as.map((a) => a.href));
  assert.ok(hrefs.some((href) => href.includes("topics/reconnection/")), hrefs.join(" "));
  assert.deepEqual(errors, []);
});

test("schema page shows fields and examples and is captured", async () => {
  await open(`${base}reference/schemas/subscribe/`);
  const headings = await page.$$eval("h2", (hs) => hs.map((h) => h.textContent.replace("¶", "").trim()));
  for (const heading of ["Fields", "Valid examples", "Invalid examples"]) assert.ok(headings.includes(heading), heading);
  const fields = await page.$$eval("table code", (cs) => cs.map((c) => c.textContent));
  for (const field of ["type", "id", "channel", "filter"]) assert.ok(fields.includes(field), field);
  await page.screenshot({ path: path.join(shots, "schema-subscribe.png") });
  assert.ok(statSync(path.join(shots, "schema-subscribe.png")).size > 10000);
  assert.deepEqual(errors, []);
});
