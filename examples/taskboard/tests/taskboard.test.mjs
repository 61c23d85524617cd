// The task board in Debian's Chromium (playwright-core): tenant isolation, a server restart,
// and a form submitted across a dropped connection. Screenshots go to
// $UNISOCK_SCREENSHOTS (docs/images/taskboard with `make screenshots`), else a temp folder.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, mkdirSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { launchChromium } from "../../../reference/js/tools/chromium.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const example = path.resolve(here, "..");
const repo = path.resolve(example, "..", "..");
const python = process.env.UNISOCK_PYTHON || path.join(repo, ".venv", "bin", "python");
const scale = Number(process.env.UNISOCK_TIME_SCALE || "1");
const timeout = 15000 * scale;
const shots = process.env.UNISOCK_SCREENSHOTS || mkdtempSync(path.join(os.tmpdir(), "taskboard-shots-"));
mkdirSync(shots, { recursive: true });

let browser;
let backend;
let port;
let data;

function freePort() {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.listen(0, "127.0.0.1", () => {
      const { port: chosen } = server.address();
      server.close(() => resolve(chosen));
    });
  });
}

/** Starts the backend and resolves once it listens. */
function startBackend() {
  const child = spawn(python, ["-m", "taskboard", "--port", String(port), "--data", data], {
    cwd: example,
    stdio: ["ignore", "pipe", "inherit"],
  });
  return new Promise((resolve, reject) => {
    const lines = createInterface({ input: child.stdout });
    lines.on("line", (line) => line.startsWith("taskboard:") && resolve(child));
    child.on("exit", (code) => reject(new Error(`the backend exited with ${code}`)));
  });
}

function stopBackend(child, signal = "SIGTERM") {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    child.once("exit", () => resolve());
    child.kill(signal);
  });
}

/** A TCP proxy whose server-to-client direction can be held, and whose connections cut. */
function proxy(target) {
  const sockets = new Set();
  const state = { hold: false };
  const server = net.createServer((client) => {
    const upstream = net.connect(target, "127.0.0.1");
    sockets.add(client).add(upstream);
    client.on("data", (chunk) => upstream.write(chunk));
    upstream.on("data", (chunk) => state.hold || client.write(chunk));
    for (const s of [client, upstream]) {
      s.on("error", () => undefined);
      s.on("close", () => {
        sockets.delete(s);
        client.destroy();
        upstream.destroy();
      });
    }
  });
  return new Promise((resolve) =>
    server.listen(0, "127.0.0.1", () =>
      resolve({
        port: server.address().port,
        state,
        cut: () => sockets.forEach((s) => s.resetAndDestroy?.() ?? s.destroy()),
        close: () => server.close(),
      }),
    ),
  );
}

async function open(user, extra = "") {
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  const page = await context.newPage();
  const sockets = [];
  page.on("websocket", (ws) => sockets.push(ws.url()));
  page.on("pageerror", (error) => console.error(`${user}: ${error.message}`));
  await page.goto(`http://127.0.0.1:${port}/?user=${user}${extra}`);
  await page.getByTestId("state").filter({ hasText: "open" }).waitFor({ timeout });
  return { page, sockets, context };
}

async function addTask(page, title) {
  await page.getByTestId("new-task").getByLabel("title").fill(title);
  await page.getByTestId("new-task").getByRole("button", { name: "Add task" }).click();
}

const board = (page) => page.getByTestId("board");
const seen = (page, text) => board(page).getByText(text, { exact: true }).waitFor({ timeout });

async function snapshot(user) {
  const { token } = await (await fetch(`http://127.0.0.1:${port}/api/token?user=${user}`)).json();
  return (await fetch(`http://127.0.0.1:${port}/api/snapshot`, { headers: { Authorization: `Bearer ${token}` } })).json();
}

async function until(probe, what) {
  const deadline = Date.now() + timeout;
  for (;;) {
    if (await probe()) return;
    if (Date.now() > deadline) throw new Error(`timed out: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

before(async () => {
  port = await freePort();
  data = mkdtempSync(path.join(os.tmpdir(), "taskboard-data-"));
  backend = await startBackend();
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  if (backend) await stopBackend(backend);
});

test("two tenants side by side never see each other's tasks, on one WebSocket per page", async () => {
  const alice = await open("alice");
  const bob = await open("bob");
  const carol = await open("carol");
  await addTask(alice.page, "Acme launch plan");
  await addTask(carol.page, "Globex roadmap");
  await seen(bob.page, "Acme launch plan"); // delivered within the tenant
  await seen(carol.page, "Globex roadmap");
  // Fences: a later event of each tenant has arrived, so anything leaked would be there.
  await addTask(carol.page, "Globex fence");
  await addTask(alice.page, "Acme fence");
  await seen(carol.page, "Globex fence");
  await seen(alice.page, "Acme fence");
  assert.equal(await board(carol.page).getByText(/Acme/).count(), 0);
  assert.equal(await board(alice.page).getByText(/Globex/).count(), 0);
  assert.equal(await carol.page.getByTestId("activity").getByText(/Acme/).count(), 0);
  assert.equal(await alice.page.getByTestId("tenant").textContent(), "acme");
  assert.equal(await carol.page.getByTestId("tenant").textContent(), "globex");
  for (const { sockets } of [alice, bob, carol]) assert.equal(sockets.length, 1, `sockets: ${sockets}`);
  // Status changes reach the filtered counts widget; bob's board follows.
  const card = board(alice.page).getByTestId("task").filter({ hasText: "Acme launch plan" });
  await card.getByRole("button", { name: "Start" }).click();
  await bob.page.getByTestId("column-in_progress").getByText("Acme launch plan").waitFor({ timeout });
  await alice.page.getByTestId("counts").getByText("status changes received: 3").waitFor({ timeout });
  await alice.page.screenshot({ path: path.join(shots, "taskboard-acme.png") });
  await carol.page.screenshot({ path: path.join(shots, "taskboard-globex.png") });
  await Promise.all([alice, bob, carol].map(({ context }) => context.close()));
});

test("after the server is killed and restarted the page reconnects with backoff and loses nothing", async () => {
  const alice = await open("alice");
  await addTask(alice.page, "Before the restart");
  await seen(alice.page, "Before the restart");
  await stopBackend(backend, "SIGKILL");
  await alice.page.getByTestId("state").filter({ hasText: /waiting|connecting/ }).waitFor({ timeout });
  // Submitted while the server is down: kept by the client and sent once after reconnecting.
  await addTask(alice.page, "Added while offline");
  await until(async () => Number(await alice.page.getByTestId("reconnects").textContent()) >= 2, "two attempts");
  backend = await startBackend();
  await alice.page.getByTestId("state").filter({ hasText: "open" }).waitFor({ timeout });
  await seen(alice.page, "Added while offline");
  await seen(alice.page, "Before the restart");
  // The restart lost the broker's history: the page was told (a resync), not left stale.
  await until(async () => Number(await alice.page.getByTestId("resyncs").textContent()) >= 1, "a resync");
  const bob = await open("bob");
  await seen(bob.page, "Added while offline");
  await addTask(bob.page, "After the restart");
  await seen(alice.page, "After the restart");
  for (const title of ["Before the restart", "Added while offline", "After the restart"]) {
    assert.equal(await board(alice.page).getByText(title, { exact: true }).count(), 1, title);
  }
  const titles = (await snapshot("alice")).tasks.map((t) => t.title);
  assert.equal(titles.filter((t) => t === "Added while offline").length, 1);
  await alice.page.getByTestId("connection").screenshot({ path: path.join(shots, "taskboard-connection.png") });
  await Promise.all([alice, bob].map(({ context }) => context.close()));
});

test("a form submitted across a dropped connection yields exactly one event", async () => {
  const relay = await proxy(port);
  const alice = await open("alice", `&ws=ws://127.0.0.1:${relay.port}/ws`);
  const bob = await open("bob");
  const before = (await snapshot("bob")).forms;
  relay.state.hold = true; // the server's replies to alice are lost from here on
  await alice.page.getByTestId("feedback").getByLabel("message").fill("The board is great");
  await alice.page.getByTestId("feedback").getByRole("button", { name: "Send" }).click();
  await until(async () => (await snapshot("bob")).forms === before + 1, "the submission sequenced");
  relay.state.hold = false;
  relay.cut(); // the ack is gone with the connection: the client retries with the same id
  await alice.page.getByTestId("feedback-status").filter({ hasText: "already recorded" }).waitFor({ timeout });
  await bob.page.getByTestId("feedback").getByLabel("message").fill("Fence");
  await bob.page.getByTestId("feedback").getByRole("button", { name: "Send" }).click();
  await bob.page.getByTestId("feedback-status").filter({ hasText: "Received as" }).waitFor({ timeout });
  assert.equal((await snapshot("bob")).forms, before + 2);
  const feed = bob.page.getByTestId("activity");
  await feed.getByText("bob sent feedback").waitFor({ timeout });
  assert.equal(await feed.getByText("alice sent feedback").count(), 1);
  await alice.page.getByTestId("feedback").screenshot({ path: path.join(shots, "taskboard-feedback.png") });
  await Promise.all([alice, bob].map(({ context }) => context.close()));
  relay.close();
});
