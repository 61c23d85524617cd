/**
 * The client's test adapter on Node.js: `npm run --silent adapter`. Requests arrive on
 * standard input, replies and notifications leave on standard output (spec section 16);
 * diagnostics go to standard error. Node.js 20 has no global WebSocket, so the `ws` package
 * provides one; the client itself only sees the WebSocket interface.
 */
import { createInterface } from "node:readline";
import WebSocket from "ws";
import type { WebSocketConstructor } from "../src/index.js";
import { Adapter } from "./core.js";

// Protocol lines only on stdout (UNI-ADP-1): console output goes to stderr.
// eslint-disable-next-line no-console
console.log = console.error;
// eslint-disable-next-line no-console
console.info = console.error;

const adapter = new Adapter({
  write: (line) => process.stdout.write(`${line}\n`),
  WebSocket: WebSocket as unknown as WebSocketConstructor,
  adapterName: "unisock-js-node-adapter",
});

const input = createInterface({ input: process.stdin, crlfDelay: Infinity });
input.on("line", (line) => adapter.feed(line));

async function leave(): Promise<void> {
  await adapter.shutdown();
  // Let stdout drain, then exit 0 (UNI-ADP-11).
  process.stdout.write("", () => process.exit(0));
}

input.on("close", () => void leave());
void adapter.exited.then(leave);
