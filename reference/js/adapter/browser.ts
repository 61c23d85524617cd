/**
 * The client's test adapter in headless Chromium: `npm run --silent adapter:browser`.
 *
 * Debian's Chromium (never a downloaded build) is driven by Playwright. The page loads the
 * client and the adapter core (dist/adapter-page.js) from a loopback origin; this process
 * bridges the suite's standard input to the page and the page's lines to standard output.
 * The client in the page uses the browser's native WebSocket.
 */
import { readFile } from "node:fs/promises";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import path from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { launchChromium } from "../tools/chromium.mjs";
import { helloReply } from "./core.js";

// Protocol lines only on stdout (UNI-ADP-1): console output goes to stderr.
// eslint-disable-next-line no-console
console.log = console.error;
const here = path.dirname(fileURLToPath(import.meta.url));
const NAME = "unisock-js-chromium-adapter";

/** Serves the page from a loopback origin, like a page of a local development server. */
async function servePage(html: string): Promise<{ url: string; stop: () => void }> {
  const server = createServer((request, response) => {
    if (request.url !== "/") {
      response.writeHead(404).end();
      return;
    }
    response.writeHead(200, { "content-type": "text/html; charset=utf-8" });
    response.end(html);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return { url: `http://127.0.0.1:${port}/`, stop: () => server.close() };
}

function parse(line: string): Record<string, unknown> | undefined {
  try {
    const value: unknown = JSON.parse(line);
    return typeof value === "object" && value !== null ? (value as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

async function main(): Promise<void> {
  // Lines wait here until the page is up; reading starts at once so that no input is lost.
  const pending: string[] = [];
  const hooks: { deliver?: () => void; closed?: () => void } = {};
  const input = createInterface({ input: process.stdin, crlfDelay: Infinity });
  input.on("line", (line) => {
    // hello concerns only the adapter protocol: answered here while Chromium starts.
    const request = parse(line);
    if (request?.["cmd"] === "hello") {
      process.stdout.write(`${JSON.stringify(helloReply(request, NAME))}\n`);
      return;
    }
    pending.push(line);
    hooks.deliver?.();
  });
  let inputClosed = false;
  input.on("close", () => {
    inputClosed = true;
    hooks.closed?.();
  });

  const script = await readFile(path.join(here, "adapter-page.js"), "utf8");
  const browser = await launchChromium();
  const page = await browser.newPage();
  page.on("console", (message) => console.error(`page: ${message.text()}`));
  page.on("pageerror", (error) => console.error(`page error: ${error.message}`));
  await page.exposeFunction("unisockAdapterEmit", (line: string) => {
    process.stdout.write(`${line}\n`);
  });
  const site = await servePage(
    `<!doctype html><title>unisock adapter</title><script>${script.replace(/<\/script/g, "<\\/script")}</script>`,
  );
  await page.goto(site.url);

  let ready = true;
  // Lines reach the page in order; each evaluate returns at once, commands run concurrently.
  const pump = async (): Promise<void> => {
    if (!ready) return;
    ready = false;
    while (pending.length > 0) {
      const line = pending.shift() as string;
      await page.evaluate((l) => window.unisockAdapterFeed(l), line).catch((error: Error) => {
        console.error(`adapter: could not pass a line to the page: ${error.message}`);
      });
    }
    ready = true;
  };

  let leaving = false;
  const leave = async (): Promise<void> => {
    if (leaving) return;
    leaving = true;
    const deadline = setTimeout(() => process.exit(0), 2500);
    await page.evaluate(() => window.unisockAdapterShutdown()).catch(() => undefined);
    await browser.close().catch(() => undefined);
    site.stop();
    clearTimeout(deadline);
    process.stdout.write("", () => process.exit(0)); // UNI-ADP-11
  };

  hooks.deliver = () => void pump();
  void pump();
  hooks.closed = () => void leave();
  if (inputClosed) void leave();
  void page
    .evaluate(() => window.unisockAdapterExited)
    .then(() => leave())
    .catch(() => undefined);
}

main().catch((error: Error) => {
  console.error(`adapter: ${error.stack ?? error.message}`);
  process.exit(1);
});
