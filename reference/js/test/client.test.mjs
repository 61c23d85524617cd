// The client against an in-memory server: what it sends, what it hands the application.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { UnisockClient, ServerError, LocalError } from "../dist/index.js";
import { FakeServer, welcome } from "./fake.mjs";

async function open(options = {}, server = new FakeServer(options.fake)) {
  const client = new UnisockClient({ url: "ws://127.0.0.1:1/", token: "t0", WebSocket: server.WebSocket, ...options.client });
  const connected = client.connect();
  const socket = await server.socket(0);
  socket.deliver(welcome(options.welcome));
  await connected;
  return { client, server, socket };
}

function subscribed(socket, frame, position) {
  socket.deliver({ type: "subscribed", id: frame.id, channel: frame.channel, ts: 1000, ...(position ? { position } : {}) });
}

function event(channel, epoch, offset, extra = {}) {
  return { type: "event", channel, epoch, offset, event: "t.e", data: { offset }, message_id: `${channel}:${offset}`, ts: 2000 + offset, ...extra };
}

test("client sends hello with the token first and offers unisock.v1", async () => {
  const server = new FakeServer();
  const client = new UnisockClient({ url: "ws://127.0.0.1:1/", token: "secret-token", WebSocket: server.WebSocket });
  client.connect().catch(() => undefined);
  const socket = await server.socket(0);
  assert.deepEqual(socket.offered, ["unisock.v1"]);
  assert.equal(socket.url.includes("secret-token"), false);
  assert.deepEqual(socket.sent[0], { type: "hello", token: "secret-token", client: { name: "unisock-js", version: "1.0.0" } });
  await client.close();
});

const NoSocket = function () {};

test("client refuses a token in the URL and plain ws: to a remote host", () => {
  assert.throws(() => new UnisockClient({ url: "ws://127.0.0.1/?t=abc", token: "abc", WebSocket: NoSocket }), LocalError);
  assert.throws(() => new UnisockClient({ url: "ws://example.com/", token: "abc", WebSocket: NoSocket }), LocalError);
});

test("client drops duplicates, signals resyncs and passes coalesced events as new", async () => {
  const { client, socket } = await open();
  const events = [];
  const resyncs = [];
  client.on("event", (e) => events.push(e.offset));
  client.on("resync", (r) => resyncs.push(r));
  const sub = client.subscribe("tasks.42");
  subscribed(socket, socket.of("subscribe")[0], { epoch: "e1", offset: 1 });
  await sub.ready;
  for (const offset of [1, 2, 2, 5, 3]) socket.deliver(event("tasks.42", "e1", offset));
  socket.deliver(event("tasks.42", "e1", 9, { coalesced: [7, 8] }));
  socket.deliver({ type: "gap", channel: "tasks.42", epoch: "e1", offset: 20, reason: "window_exceeded" });
  socket.deliver(event("tasks.42", "e1", 20));
  socket.deliver(event("tasks.42", "E1", 1));
  assert.deepEqual(events, [2, 5, 9, 1]);
  assert.deepEqual(resyncs.map((r) => [r.reason, r.epoch, r.offset]), [["window_exceeded", "e1", 20], ["epoch_changed", "E1", 0]]);
  assert.deepEqual(client.positions(), { "tasks.42": { epoch: "E1", offset: 1 } });
  await client.close();
});

test("client resumes every subscription with from positions and since after a lost connection", async () => {
  const { client, server, socket } = await open();
  const sub = client.subscribe("jobs.>", { filter: { eq: ["$event", "t.e"] } });
  subscribed(socket, socket.of("subscribe")[0]);
  await sub.ready;
  socket.deliver(event("jobs.a", "e1", 4));
  socket.deliver(event("jobs.b", "e2", 7));
  socket.serverClose(1006, "");
  const next = await server.socket(1);
  assert.equal(next.sent[0].type, "hello");
  next.deliver(welcome());
  const frame = await server.until(() => next.of("subscribe")[0]);
  assert.deepEqual(frame.filter, { eq: ["$event", "t.e"] });
  assert.deepEqual(frame.from, { "jobs.a": { epoch: "e1", offset: 4 }, "jobs.b": { epoch: "e2", offset: 7 } });
  assert.equal(frame.since, 2007);
  await client.close();
});

test("client re-sends an unacknowledged publish with the same message_id", async () => {
  const { client, server, socket } = await open();
  const acked = client.publish("tasks.42", "task.updated", { a: "é" }, { attrs: { status: "done" } });
  const first = await server.until(() => socket.of("publish")[0]);
  socket.serverClose(1011, "internal_error");
  const next = await server.socket(1);
  next.deliver(welcome());
  const second = await server.until(() => next.of("publish")[0]);
  assert.equal(second.message_id, first.message_id);
  assert.notEqual(second.id, first.id);
  next.deliver({ type: "ack", id: second.id, channel: "tasks.42", message_id: second.message_id, epoch: "e1", offset: 3, duplicate: true });
  assert.deepEqual(await acked, { channel: "tasks.42", messageId: first.message_id, epoch: "e1", offset: 3, duplicate: true });
  await client.close();
});

test("client refuses locally a publish over max_message_bytes counted in UTF-8 octets", async () => {
  const { client, socket } = await open({ welcome: { limits: { ...welcome().limits, max_message_bytes: 200 } } });
  // 60 two-octet characters: 120 octets but 60 UTF-16 units, so only octets exceed the limit.
  await assert.rejects(client.publish("tasks.1", "t.e", "é".repeat(60), { messageId: "m".repeat(20) }), LocalError);
  assert.equal(socket.of("publish").length, 0);
  await client.close();
});

test("client reports server errors by code and keeps the rate-limited publish back", async () => {
  const { client, server, socket } = await open();
  const first = client.publish("tasks.1", "t.e", {}, { messageId: "m1" });
  const frame = await server.until(() => socket.of("publish")[0]);
  socket.deliver({ type: "error", id: frame.id, code: "rate_limited", message: "slow", retry_after_ms: 5000 });
  await assert.rejects(first, (e) => e instanceof ServerError && e.code === "rate_limited" && e.retryAfterMs === 5000);
  await assert.rejects(client.publish("tasks.1", "t.e", {}, { messageId: "m1" }), (e) => e instanceof LocalError && e.code === "rate_limited");
  assert.equal(socket.of("publish").length, 1);
  await client.close();
});

test("client closes with 4000 on a binary frame where the interface refuses 1003", async () => {
  const { client, socket } = await open({ fake: { browserLike: true } });
  socket.deliver(new ArrayBuffer(2));
  await client.waitClosed();
  assert.deepEqual(socket.clientClose, { code: 4000, reason: "unsupported_data" });
});

test("client closes with 1003 on a binary frame where the interface allows it", async () => {
  const { client, socket } = await open();
  socket.deliver(new ArrayBuffer(2));
  await client.waitClosed();
  assert.equal(socket.clientClose.code, 1003);
});

test("client answers pings echoing nonce and id and refreshes on token_expiring", async () => {
  let calls = 0;
  const { client, server, socket } = await open({ client: { token: () => `tok-${(calls += 1)}` } });
  socket.deliver({ type: "ping", id: "k1", nonce: "n1" });
  assert.deepEqual(socket.of("pong"), [{ type: "pong", id: "k1", nonce: "n1" }]);
  socket.deliver({ type: "token_expiring", expires_at: 1 });
  const refresh = await server.until(() => socket.of("refresh")[0]);
  assert.equal(refresh.token, "tok-2");
  await client.close();
});

test("subscriptions with the same pattern share one wire subscription", async () => {
  const { client, server, socket } = await open();
  const seen = [];
  const a = client.subscribe("tasks.>", { onEvent: (e) => seen.push(["a", e.offset]) });
  const b = client.subscribe("tasks.>", { onEvent: (e) => seen.push(["b", e.offset]) });
  assert.equal(socket.of("subscribe").length, 1);
  assert.throws(() => client.subscribe("tasks.>", { filter: { exists: "x" } }), LocalError);
  subscribed(socket, socket.of("subscribe")[0]);
  await Promise.all([a.ready, b.ready]);
  socket.deliver(event("tasks.1", "e", 1));
  await a.unsubscribe();
  assert.equal(socket.of("unsubscribe").length, 0);
  socket.deliver(event("tasks.1", "e", 2));
  const done = b.unsubscribe();
  const frame = await server.until(() => socket.of("unsubscribe")[0]);
  socket.deliver({ type: "unsubscribed", id: frame.id, channel: "tasks.>", reason: "requested" });
  await done;
  assert.deepEqual(seen, [["a", 1], ["b", 1], ["b", 2]]);
  await client.close();
});

test("overlapping subscriptions each get only what their own filter selects", async () => {
  const { client, socket } = await open();
  const all = [];
  const done = [];
  const a = client.subscribe("tasks.>", { onEvent: (e) => all.push(e.offset) });
  const b = client.subscribe("tasks.*", { filter: { eq: ["status", "done"] }, onEvent: (e) => done.push(e.offset) });
  for (const frame of socket.of("subscribe")) subscribed(socket, frame);
  await Promise.all([a.ready, b.ready]);
  socket.deliver(event("tasks.1", "e", 1, { attrs: { status: "todo" } }));
  socket.deliver(event("tasks.1", "e", 2, { attrs: { status: "done" } }));
  assert.deepEqual(all, [1, 2]);
  assert.deepEqual(done, [2]);
  await client.close();
});

const WELCOME_EXAMPLES = JSON.parse(readFileSync(new URL("../../../schemas/v1/examples/welcome.json", import.meta.url), "utf8"));
// First messages that are not a valid welcome (UNI-LC-21): other types, no JSON object, and
// every invalid welcome of the schema examples.
const NOT_WELCOME = [
  ["a ping", { type: "ping", id: "p0", nonce: "n0" }],
  ["an unknown type", { type: "x_future_greeting" }],
  ["text that is not JSON", "welcome"],
  ["a JSON array", JSON.stringify([welcome()])],
  ...WELCOME_EXAMPLES.invalid.map(({ description, message }) => [description, message]),
];

test("client accepts each valid welcome of the schema examples as the first message", async () => {
  for (const example of WELCOME_EXAMPLES.valid) {
    const server = new FakeServer();
    const client = new UnisockClient({ url: "ws://127.0.0.1:1/", token: "t0", WebSocket: server.WebSocket });
    try {
      const connected = client.connect();
      (await server.socket(0)).deliver(example);
      assert.equal((await connected).connection_id, example.connection_id);
    } finally {
      await client.close();
    }
  }
});

test("client closes an attempt whose first message is not a valid welcome, sends nothing more and retries with backoff", async () => {
  // The fake welcome's backoff: every delay within [100, 200] ms.
  const { client, server, socket } = await open();
  try {
    const sub = client.subscribe("tasks.42");
    subscribed(socket, socket.of("subscribe")[0]);
    await sub.ready;
    socket.serverClose(1011, "internal_error");
    let ended = Date.now();
    let index = 1;
    for (const [what, first] of NOT_WELCOME) {
      const attempt = await server.socket(index);
      assert.ok(Date.now() - ended >= 90, `${what}: the attempt started ${Date.now() - ended} ms after the last`);
      attempt.deliver(first);
      await server.until(() => attempt.clientClose);
      ended = Date.now();
      assert.deepEqual(attempt.clientClose, { code: 1002, reason: "protocol_error" }, what);
      assert.deepEqual(attempt.sent.map((m) => m.type), ["hello"], what);
      index += 1;
    }
    const next = await server.socket(index);
    next.deliver(welcome());
    assert.equal((await server.until(() => next.of("subscribe")[0])).channel, "tasks.42");
  } finally {
    await client.close();
  }
});

test("client closes with 4000 on a first message other than welcome where the interface refuses 1002", async () => {
  const { client, server, socket } = await open({ fake: { browserLike: true } });
  try {
    socket.serverClose(1011, "internal_error");
    const attempt = await server.socket(1);
    attempt.deliver({ type: "event", channel: "tasks.42", epoch: "e1", offset: 1, event: "t.e", data: {}, message_id: "m1", ts: 1 });
    await server.until(() => attempt.clientClose);
    assert.deepEqual(attempt.clientClose, { code: 4000, reason: "protocol_error" });
    await server.socket(2);
  } finally {
    await client.close();
  }
});
