// An in-memory WebSocket pair for unit tests: the test plays the server.
export class FakeServer {
  constructor({ browserLike = false, protocol = "unisock.v1" } = {}) {
    this.sockets = [];
    this.waiters = [];
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const server = this;
    this.WebSocket = class FakeSocket {
      constructor(url, protocols) {
        this.url = url;
        this.offered = protocols;
        this.protocol = "";
        this.binaryType = "blob";
        this.sent = [];
        this.clientClose = undefined;
        this.onopen = this.onmessage = this.onclose = this.onerror = null;
        server.sockets.push(this);
        for (const wake of server.waiters.splice(0)) wake();
        queueMicrotask(() => {
          this.protocol = protocol;
          this.onopen?.({});
        });
      }
      send(text) {
        this.sent.push(JSON.parse(text));
        for (const wake of server.waiters.splice(0)) wake();
      }
      close(code = 1005, reason = "") {
        if (browserLike && code !== 1000 && (code < 3000 || code > 4999)) {
          throw new Error(`InvalidAccessError: ${code}`);
        }
        if (this.clientClose) return;
        this.clientClose = { code, reason };
        queueMicrotask(() => this.onclose?.({ code, reason }));
      }
      // Test side.
      deliver(message) {
        this.onmessage?.({ data: typeof message === "string" || message instanceof ArrayBuffer ? message : JSON.stringify(message) });
      }
      serverClose(code, reason = "") {
        this.onclose?.({ code, reason });
      }
      of(type) {
        return this.sent.filter((m) => m.type === type);
      }
    };
  }

  /** Resolves once `probe()` is truthy (checked after every socket or frame). */
  async until(probe, timeoutMs = 2000) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const value = probe();
      if (value) return value;
      if (Date.now() > deadline) throw new Error("timed out waiting");
      await new Promise((resolve) => {
        this.waiters.push(resolve);
        setTimeout(resolve, 10);
      });
    }
  }

  socket(index) {
    return this.until(() => this.sockets[index]?.sent.length ? this.sockets[index] : undefined);
  }
}

export function welcome(overrides = {}) {
  return {
    type: "welcome",
    protocol: "unisock.v1",
    spec_version: "1.0.0",
    connection_id: "c1",
    session: { tenant: "acme", sub: "alice", role: "user", expires_at: 4102444800 },
    heartbeat: { interval_ms: 25000, timeout_ms: 10000 },
    backoff: { base_ms: 100, cap_ms: 200, floor_ms: 100, reset_after_ms: 10000 },
    limits: {
      max_message_bytes: 65536,
      max_subscriptions: 100,
      publish_rate: { per_second: 50, burst: 100 },
      max_queue: 1024,
      max_connections_per_user: 5,
      auth_timeout_ms: 10000,
      max_filter_nodes: 32,
      max_targets: 100,
      max_attrs: 16,
    },
    history: { max_count: 1000, max_age_ms: 300000 },
    dedup_window_ms: 120000,
    refresh_warning_ms: 60000,
    features: [],
    ...overrides,
  };
}
