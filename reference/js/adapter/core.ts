/**
 * The client's test adapter (spec section 16), independent of where it runs: Node.js
 * (adapter/node.ts) or a page in Chromium (adapter/page.ts). It only translates between the
 * adapter protocol and the client's public interface, adding no protocol behaviour of its
 * own (UNI-CONF-10). Requests run concurrently (UNI-ADP-4).
 */
import {
  ClosedError,
  LocalError,
  ServerError,
  TimeoutError,
  UnisockClient,
  VERSION,
  type CloseInfo,
  type WebSocketConstructor,
} from "../src/index.js";
import type { AdapterReply, AdapterRequest } from "../src/generated/adapter.js";

export const ADAPTER_PROTOCOL = 1;
export const COMMANDS = [
  "hello",
  "connect",
  "subscribe",
  "unsubscribe",
  "publish",
  "refresh",
  "provide_token",
  "positions",
  "close",
  "exit",
] as const;

type Request = AdapterRequest & Record<string, unknown>;
type Result = Record<string, unknown>;

/** Ends a command with an outcome other than `result`. */
class Outcome extends Error {
  constructor(
    readonly outcome: "skipped" | "errored",
    readonly payload: Record<string, unknown>,
  ) {
    super(outcome);
  }
}

const skipped = (reason: string): Outcome => new Outcome("skipped", { reason });

function errored(kind: string, message: string, extra: Record<string, unknown> = {}): Outcome {
  const error: Record<string, unknown> = { kind, message };
  for (const [key, value] of Object.entries(extra)) if (value !== undefined) error[key] = value;
  return new Outcome("errored", { error });
}

function closeJson(close: CloseInfo | undefined): Record<string, unknown> | undefined {
  if (!close) return undefined;
  return {
    code: close.code,
    reason: close.reason.slice(0, 123),
    superseded: close.superseded,
    local: close.local,
  };
}

/** A failure of a client call, as the adapter reports it (UNI-ADP-6). */
function translate(error: unknown): Outcome {
  if (error instanceof Outcome) return error;
  if (error instanceof ServerError) {
    return errored("server", error.message, { code: error.code, retry_after_ms: error.retryAfterMs });
  }
  if (error instanceof ClosedError) return errored("closed", error.message, { close: closeJson(error.close) });
  if (error instanceof TimeoutError) return errored("timeout", error.message);
  if (error instanceof LocalError || (error instanceof Error && error.name === "ChannelError")) {
    const local = error as LocalError;
    return errored("local", local.message, { code: local.code, retry_after_ms: local.retryAfterMs });
  }
  return errored("adapter", error instanceof Error ? error.name : "failure");
}

/**
 * The reply to `hello` (UNI-ADP-3). time_scale is not passed on: the client has no timers
 * that `welcome` does not announce.
 */
export function helloReply(request: Record<string, unknown>, adapterName: string): Record<string, unknown> {
  if (request["protocol"] !== ADAPTER_PROTOCOL) {
    return {
      seq: request["seq"],
      outcome: "errored",
      error: { kind: "unsupported_protocol", message: `this adapter speaks ${ADAPTER_PROTOCOL}` },
    };
  }
  return {
    seq: request["seq"],
    outcome: "result",
    result: {
      protocol: ADAPTER_PROTOCOL,
      adapter: { name: adapterName, version: VERSION },
      client: { name: "unisock-js", version: VERSION },
      commands: [...COMMANDS],
    },
  };
}

export interface AdapterHost {
  /** Writes one protocol line (UNI-ADP-1). */
  write(line: string): void;
  readonly WebSocket?: WebSocketConstructor;
  readonly adapterName: string;
}

export class Adapter {
  private client?: UnisockClient;
  private initialToken?: string;
  private readonly tokenRequests = new Map<string, (token: string | null) => void>();
  private tokenCounter = 0;
  private exitRequested = false;
  private resolveExit!: () => void;
  /** Resolves after the reply to `exit` was written. */
  readonly exited = new Promise<void>((resolve) => {
    this.resolveExit = resolve;
  });

  constructor(private readonly host: AdapterHost) {}

  /** Handle one input line; each request runs on its own (UNI-ADP-4). */
  feed(line: string): void {
    if (!line.trim()) return;
    let request: unknown;
    try {
      request = JSON.parse(line);
    } catch {
      console.error("adapter: ignored a line that is not JSON");
      return;
    }
    if (typeof request !== "object" || request === null || !Number.isInteger((request as Request).seq)) {
      console.error("adapter: ignored a request without seq");
      return;
    }
    void this.run(request as Request);
  }

  private emit(message: Record<string, unknown>): void {
    this.host.write(JSON.stringify(message));
  }

  private notify(kind: string, fields: Record<string, unknown>): void {
    const message: Record<string, unknown> = { notify: kind };
    for (const [key, value] of Object.entries(fields)) if (value !== undefined) message[key] = value;
    this.emit(message);
  }

  private async run(request: Request): Promise<void> {
    const { seq, cmd } = request;
    let reply: AdapterReply;
    try {
      const handler = (COMMANDS as readonly string[]).includes(cmd) ? this.handlers[cmd as (typeof COMMANDS)[number]] : undefined;
      if (!handler) throw skipped(`unknown command ${JSON.stringify(cmd)}`);
      const result = await handler(request);
      reply = { seq, outcome: "result", result } as AdapterReply;
    } catch (error) {
      const outcome = translate(error);
      if (outcome.payload["error"] && (outcome.payload["error"] as Result)["kind"] === "adapter") {
        console.error(`adapter: command ${String(cmd)} failed`, error);
      }
      reply = { seq, outcome: outcome.outcome, ...outcome.payload } as AdapterReply;
    }
    this.emit(reply as unknown as Record<string, unknown>);
    if (cmd === "exit") this.resolveExit();
  }

  // -- client wiring --------------------------------------------------------------------------

  /** The token provider: the token of `connect` first, then the suite is asked each time. */
  private provide = (): Promise<string | null> | string => {
    if (this.initialToken !== undefined) {
      const token = this.initialToken;
      this.initialToken = undefined;
      return token;
    }
    if (this.exitRequested) return Promise.resolve(null);
    this.tokenCounter += 1;
    const id = `t${this.tokenCounter}`;
    return new Promise<string | null>((resolve) => {
      this.tokenRequests.set(id, resolve);
      this.notify("token_request", { request: id });
    });
  };

  private wire(client: UnisockClient): void {
    client.on("state", (state, close) => {
      const withClose = state === "waiting" || state === "closed";
      this.notify("state", { state, close: withClose ? closeJson(close) : undefined });
    });
    client.on("event", (event) =>
      this.notify("event", {
        channel: event.channel,
        epoch: event.epoch,
        offset: event.offset,
        event: event.event,
        data: event.data,
        message_id: event.messageId,
        ts: event.ts,
        attrs: event.attrs,
        publisher: event.publisher,
        coalesced: event.coalesced,
      }),
    );
    client.on("resync", (resync) => this.notify("resync", { ...resync }));
    client.on("subscriptionEnded", (ended) => this.notify("subscription_ended", { ...ended }));
  }

  private requireClient(): UnisockClient {
    if (!this.client) throw errored("closed", "connect was never called");
    return this.client;
  }

  // -- commands -------------------------------------------------------------------------------

  private readonly handlers: Record<(typeof COMMANDS)[number], (request: Request) => Promise<Result>> = {
    hello: async (request) => {
      const reply = helloReply(request, this.host.adapterName);
      if (reply.outcome !== "result") throw errored("unsupported_protocol", `this adapter speaks ${ADAPTER_PROTOCOL}`);
      return reply.result as Result;
    },
    connect: async (request) => {
      const { url, token } = request;
      if (typeof url !== "string" || typeof token !== "string") throw errored("bad_request", "connect needs url and token");
      this.initialToken = token;
      if (!this.client) {
        try {
          this.client = new UnisockClient({
            url,
            token: this.provide,
            ...(this.host.WebSocket ? { WebSocket: this.host.WebSocket } : {}),
          });
        } catch (error) {
          throw errored("local", (error as Error).message);
        }
        this.wire(this.client);
      }
      const timeoutMs = typeof request["timeout_ms"] === "number" ? request["timeout_ms"] : undefined;
      const welcome = await this.client.connect(timeoutMs);
      return { connection_id: welcome.connection_id };
    },
    subscribe: async (request) => {
      if ("from" in request || "since" in request) {
        throw skipped("the client keeps positions itself and takes none from the application");
      }
      const client = this.requireClient();
      const filter = request["filter"] as Record<string, unknown> | undefined;
      const subscription = client.subscribe(String(request["channel"]), filter ? { filter } : {});
      const ready = await subscription.ready;
      return { channel: ready.channel, ...(ready.position ? { position: ready.position } : {}) };
    },
    unsubscribe: async (request) => {
      await this.requireClient().unsubscribe(String(request["channel"]));
      return {};
    },
    publish: async (request) => {
      const client = this.requireClient();
      const options: Record<string, unknown> = {};
      const names: Record<string, string> = {
        message_id: "messageId",
        attrs: "attrs",
        to: "to",
        exclude: "exclude",
        exclude_self: "excludeSelf",
        key: "key",
        user: "user",
      };
      for (const [wire, option] of Object.entries(names)) {
        if (request[wire] !== undefined) options[option] = request[wire];
      }
      const ack = await client.publish(String(request["channel"]), String(request["event"]), request["data"], options);
      return {
        ack: {
          channel: ack.channel,
          message_id: ack.messageId,
          epoch: ack.epoch,
          offset: ack.offset,
          duplicate: ack.duplicate,
        },
      };
    },
    refresh: async (request) => {
      const token = typeof request["token"] === "string" ? request["token"] : undefined;
      const expiresAt = await this.requireClient().refresh(token);
      return { expires_at: expiresAt };
    },
    provide_token: async (request) => {
      const id = String(request["request"]);
      const resolve = this.tokenRequests.get(id);
      if (!resolve) throw errored("bad_request", "no such pending token request");
      this.tokenRequests.delete(id);
      const token = request["token"];
      resolve(typeof token === "string" && token.length > 0 ? token : null);
      return {};
    },
    positions: async () => ({ positions: this.client ? this.client.positions() : {} }),
    close: async () => {
      await this.client?.close();
      return {};
    },
    exit: async () => {
      await this.shutdown();
      return {};
    },
  };

  /** Close the client; pending token requests get no token (UNI-ADP-11). */
  async shutdown(): Promise<void> {
    this.exitRequested = true;
    for (const resolve of this.tokenRequests.values()) resolve(null);
    this.tokenRequests.clear();
    await this.client?.close().catch(() => undefined);
  }
}
