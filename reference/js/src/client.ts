/**
 * The Unisock client: one WebSocket per session for every subscription and publish
 * (UNI-SESS-4), resumed across reconnects.
 *
 * The client keeps the application's desired state (subscriptions, unacknowledged publishes,
 * the last position per channel) apart from any one connection. Each connection sends `hello`
 * first; after `welcome` every subscription is re-sent with the positions the client holds
 * and every unacknowledged publish with its original `message_id`. What follows a close is
 * decided by the close code's class (spec section 9): stop, get a new token, back off, or
 * reconnect now.
 */
import { BackoffParams, DEFAULT_BACKOFF, backoffDelay, drainDelay, floorMs } from "./backoff.js";
import { ChannelError, Pattern, isExact, matches, parseChannel, parsePattern } from "./channels.js";
import { closeClass, parseCloseReason } from "./closecodes.js";
import { Emitter } from "./emitter.js";
import { evaluate } from "./filter.js";
import { ClosedError, LocalError, ServerError, TimeoutError, UnisockError } from "./errors.js";
import type {
  AckMessage,
  ErrorMessage,
  EventMessage,
  GapMessage,
  HelloMessage,
  PongMessage,
  PublishMessage,
  SubscribeMessage,
  SubscribedMessage,
  UnsubscribedMessage,
  WelcomeMessage,
} from "./generated/messages.js";
import {
  WebSocketConstructor,
  WebSocketLike,
  abortSocket,
  closeWith,
  nativeWebSocket,
} from "./socket.js";
import type {
  Ack,
  AttrValue,
  ClientState,
  CloseInfo,
  ConnectionSnapshot,
  Filter,
  Position,
  Resync,
  Subscribed,
  SubscriptionEnded,
  UnisockEvent,
} from "./types.js";
import { ClientMessage, ServerMessage, cryptoRandom, decode, filterNodes, randomId, utf8Length } from "./wire.js";

export const PROTOCOL = "unisock.v1";
export const VERSION = "1.0.0";
const DEFAULT_AUTH_TIMEOUT_MS = 10000;
const DEFAULT_DEDUP_WINDOW_MS = 120000;
const CLOSE_WAIT_MS = 2000;

/** Returns the token to use: called before each connection and on `token_expiring`. */
export type TokenProvider = () =>
  | string
  | null
  | undefined
  | Promise<string | null | undefined>;

export interface ClientOptions {
  /** `wss:` URL of the deployment; `ws:` only to the loopback interface (UNI-SEC-4). */
  readonly url: string;
  /** A token, or a provider; only a provider lets the client recover from 4100/4101. */
  readonly token: string | TokenProvider;
  /** The WebSocket constructor; defaults to the platform's (`globalThis.WebSocket`). */
  readonly WebSocket?: WebSocketConstructor;
  /** Further subprotocols to offer besides `unisock.v1` (UNI-TR-2). */
  readonly subprotocols?: readonly string[];
  readonly clientInfo?: { readonly name: string; readonly version: string };
  /** Allow `ws:` to hosts other than the loopback interface (development only). */
  readonly allowInsecure?: boolean;
  /** Uniform [0, 1) source for jitter; defaults to the platform CSPRNG (UNI-CLOSE-14). */
  readonly random?: () => number;
  /** Send a ping once per announced `interval_ms` to measure round-trip time (UNI-HB-13). */
  readonly measureRtt?: boolean;
}

export interface PublishOptions {
  /** The idempotency key; a fresh UUID when absent. Retries reuse it (UNI-PUB-38). */
  readonly messageId?: string;
  readonly attrs?: Readonly<Record<string, AttrValue>>;
  readonly to?: readonly string[];
  readonly exclude?: readonly string[];
  readonly excludeSelf?: boolean;
  /** Coalescing key: a slow consumer gets only the latest event with this key. */
  readonly key?: string;
  /** Owner of the `$me` channel, for broadcasters. */
  readonly user?: string;
}

export interface SubscribeOptions {
  readonly filter?: Filter;
  readonly onEvent?: (event: UnisockEvent) => void;
  readonly onResync?: (resync: Resync) => void;
  readonly onEnd?: (ended: SubscriptionEnded) => void;
}

export interface ClientEvents {
  /** The state changed; `close` says how the last connection ended (waiting, closed). */
  state: (state: ClientState, close: CloseInfo | undefined) => void;
  /** An event passed to the application, once, whichever subscriptions match it. */
  event: (event: UnisockEvent) => void;
  resync: (resync: Resync) => void;
  subscriptionEnded: (ended: SubscriptionEnded) => void;
  /** Anything in {@link UnisockClient.snapshot} changed. */
  change: () => void;
}

/** A handle on one subscription of the application. */
export interface Subscription {
  readonly channel: string;
  /** Resolves once the server confirmed the subscription. */
  readonly ready: Promise<Subscribed>;
  /** Stop receiving; the wire subscription ends when its last handle does. */
  unsubscribe(): Promise<void>;
}

interface Deferred<T> {
  readonly promise: Promise<T>;
  resolve(value: T): void;
  reject(error: unknown): void;
}

function deferred<T>(): Deferred<T> {
  let resolve!: (value: T) => void;
  let reject!: (error: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  promise.catch(() => undefined); // a caller may never look
  return { promise, resolve, reject };
}

interface Listener {
  readonly onEvent?: (event: UnisockEvent) => void;
  readonly onResync?: (resync: Resync) => void;
  readonly onEnd?: (ended: SubscriptionEnded) => void;
}

interface WireSub {
  readonly channel: string;
  readonly filter?: Filter;
  readonly filterKey: string;
  readonly pattern: Pattern;
  readonly listeners: Set<Listener>;
  confirmed: boolean;
  sentGen: number;
  /** The connection on which `subscribed` arrived (UNI-SUB-15). */
  activeGen: number;
  ts?: number;
  position?: Position;
  waiters: Deferred<Subscribed>[];
}

interface PendingPublish {
  readonly fields: Omit<PublishMessage, "type" | "id">;
  readonly done: Deferred<Ack>;
  sentGen: number;
  firstSent?: number;
}

type Request =
  | { kind: "subscribe"; key: string; plain: boolean }
  | { kind: "publish"; key: string }
  | { kind: "unsubscribe"; done: Deferred<undefined> }
  | { kind: "refresh"; done: Deferred<number> }
  | { kind: "ping"; sentAt: number };

class Stop extends Error {
  constructor(readonly close: CloseInfo) {
    super(close.reason);
  }
}

function closeInfo(code: number, reason: string, local: boolean): CloseInfo {
  return {
    code,
    reason,
    local,
    superseded: code === 4001 && !local,
    reconnectClass: closeClass(code),
  };
}

function isLoopback(hostname: string): boolean {
  return hostname === "localhost" || hostname === "[::1]" || hostname.startsWith("127.");
}

function now(): number {
  return performance.now();
}

/** The Unisock client. See the package README for a walk-through. */
export class UnisockClient extends Emitter<ClientEvents> {
  private readonly url: string;
  private readonly tokenSource: string | TokenProvider;
  private readonly WS: WebSocketConstructor;
  private readonly protocols: string[];
  private readonly info: { name: string; version: string };
  private readonly random: () => number;
  private readonly measureRtt: boolean;

  private currentState: ClientState = "idle";
  private welcomeMessage?: WelcomeMessage;
  private backoff: BackoffParams = DEFAULT_BACKOFF;
  private authTimeoutMs = DEFAULT_AUTH_TIMEOUT_MS;
  private readonly positionMap = new Map<string, Position>();
  private readonly subs = new Map<string, WireSub>();
  private readonly publishes = new Map<string, PendingPublish>();
  private readonly rateLimited = new Map<string, number>();
  private readonly requests = new Map<string, Request>();
  private nextId = 1;
  private gen = 0;
  private socket?: WebSocketLike;
  private running = false;
  private stopping = false;
  private opened = deferred<WelcomeMessage>();
  private closedSignal = deferred<CloseInfo>();
  private lastCloseInfo?: CloseInfo;
  private localClose?: CloseInfo;
  private drainWindowMs?: number;
  private lastToken?: string;
  private attempt = 0;
  private reconnects = 0;
  private nextDelayMs?: number;
  private lastAttemptAt?: number;
  private resyncCount = 0;
  private rttMs?: number;
  private wake?: () => void;
  private readonly timers = new Set<ReturnType<typeof setTimeout>>();
  private cachedSnapshot?: ConnectionSnapshot;

  constructor(options: ClientOptions) {
    super();
    let parsed: URL;
    try {
      parsed = new URL(options.url);
    } catch {
      throw new LocalError(`not a WebSocket URL: ${options.url}`);
    }
    if (parsed.protocol !== "ws:" && parsed.protocol !== "wss:") {
      throw new LocalError("the URL must start with ws: or wss:");
    }
    // Tokens travel only in hello and refresh (UNI-AUTH-1, UNI-SEC-5).
    if (typeof options.token === "string" && options.url.includes(options.token)) {
      throw new LocalError("the token must not appear in the URL");
    }
    if (parsed.protocol === "ws:" && !isLoopback(parsed.hostname) && !options.allowInsecure) {
      // No hello over plain ws: beyond this machine unless asked for (UNI-SEC-4).
      throw new LocalError("use a wss: URL (or allowInsecure for development)");
    }
    const WS = options.WebSocket ?? nativeWebSocket();
    if (!WS) throw new LocalError("no WebSocket implementation: pass options.WebSocket");
    this.url = options.url;
    this.tokenSource = options.token;
    this.WS = WS;
    // unisock.v1 always (UNI-TR-1), others may follow (UNI-TR-2).
    this.protocols = [PROTOCOL, ...(options.subprotocols ?? []).filter((p) => p !== PROTOCOL)];
    this.info = { ...(options.clientInfo ?? { name: "unisock-js", version: VERSION }) };
    this.random = options.random ?? cryptoRandom;
    this.measureRtt = options.measureRtt ?? false;
  }

  // -- public API -----------------------------------------------------------------------------

  get state(): ClientState {
    return this.currentState;
  }

  /** The `welcome` of the current (or last) connection. */
  get welcome(): WelcomeMessage | undefined {
    return this.welcomeMessage;
  }

  /** How the last connection ended; `superseded` marks a 4001 (UNI-CLOSE-24). */
  get lastClose(): CloseInfo | undefined {
    return this.lastCloseInfo;
  }

  /** The last position per channel (UNI-DEL-29), kept across reconnects and 4001. */
  positions(): Record<string, Position> {
    return Object.fromEntries(this.positionMap);
  }

  /** The patterns the client keeps subscribed across reconnects. */
  subscriptions(): string[] {
    return [...this.subs.keys()];
  }

  /** A consistent view for connection panels; a new object after every change. */
  snapshot(): ConnectionSnapshot {
    this.cachedSnapshot ??= {
      state: this.currentState,
      lastClose: this.lastCloseInfo,
      attempt: this.attempt,
      reconnects: this.reconnects,
      nextDelayMs: this.nextDelayMs,
      connectionId: this.welcomeMessage?.connection_id,
      positions: this.positions(),
      resyncs: this.resyncCount,
      rttMs: this.rttMs,
      subscriptions: this.subscriptions(),
    };
    return this.cachedSnapshot;
  }

  /**
   * Start the client and wait for the first `welcome`. Failed attempts are retried as their
   * close class says; rejects with {@link ClosedError} when the client stops first, and with
   * {@link TimeoutError} (closing the client) after `timeoutMs`. Calling it again after a stop
   * reconnects explicitly, keeping positions and subscriptions (UNI-CLOSE-2, UNI-SESS-17).
   */
  async connect(timeoutMs?: number): Promise<WelcomeMessage> {
    if (this.running) {
      if (this.welcomeMessage && (this.currentState === "open" || this.currentState === "draining")) {
        return this.welcomeMessage;
      }
    } else {
      this.start();
    }
    if (timeoutMs === undefined) return this.opened.promise;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new TimeoutError("no welcome in time")), timeoutMs);
    });
    try {
      return await Promise.race([this.opened.promise, timeout]);
    } catch (error) {
      if (error instanceof TimeoutError) await this.close();
      throw error;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Close with 1000 and stop reconnecting (UNI-CLOSE-7); resolves once stopped. */
  async close(): Promise<void> {
    if (!this.running) {
      if (this.currentState !== "closed" && this.currentState !== "idle") {
        this.finish(closeInfo(1000, "normal", true));
      }
      return;
    }
    this.stopping = true;
    const socket = this.socket;
    if (socket) {
      this.localClose = closeInfo(1000, "normal", true);
      closeWith(socket, 1000, 1000, "normal");
    }
    this.wake?.();
    const stopped = this.closedSignal.promise;
    const timer = setTimeout(() => {
      if (this.socket === socket && socket) socket.onclose?.({ code: 1000, reason: "normal" });
    }, CLOSE_WAIT_MS);
    await stopped;
    clearTimeout(timer);
  }

  /** Resolves with the close that stopped the client. */
  waitClosed(): Promise<CloseInfo> {
    return this.closedSignal.promise;
  }

  /**
   * Subscribe to a channel or pattern; kept and re-sent after every reconnect. Several
   * handles with the same pattern and filter share one wire subscription; the same pattern
   * with another filter is refused (a connection knows a subscription by its pattern).
   */
  subscribe(channel: string, options: SubscribeOptions = {}): Subscription {
    this.requireRunning();
    const pattern = parsePattern(channel); // refused locally (UNI-CH-7), else sent unchanged
    const filter = options.filter;
    if (filter !== undefined) {
      const limit = this.limit("max_filter_nodes");
      if (limit !== undefined && filterNodes(filter) > limit) {
        throw new LocalError(`the filter has more than ${limit} nodes`, "invalid_filter"); // UNI-LIM-4
      }
    }
    const filterKey = JSON.stringify(filter ?? null);
    let sub = this.subs.get(channel);
    if (sub && sub.filterKey !== filterKey) {
      throw new LocalError(`already subscribed to ${channel} with another filter`, "already_subscribed");
    }
    const listener: Listener = {
      onEvent: options.onEvent,
      onResync: options.onResync,
      onEnd: options.onEnd,
    };
    const waiter = deferred<Subscribed>();
    if (!sub) {
      sub = {
        channel,
        filter,
        filterKey,
        pattern,
        listeners: new Set(),
        confirmed: false,
        sentGen: -1,
        activeGen: -1,
        waiters: [],
      };
      this.subs.set(channel, sub);
      this.changed();
    }
    sub.listeners.add(listener);
    if (sub.confirmed && sub.activeGen === this.gen && this.isOpen()) {
      waiter.resolve(snapshotOf(sub));
    } else {
      sub.waiters.push(waiter);
    }
    if (this.isOpen()) this.sendSubscribe(sub);
    const owner = sub;
    return {
      channel,
      ready: waiter.promise,
      unsubscribe: async () => {
        owner.listeners.delete(listener);
        if (owner.listeners.size === 0 && this.subs.get(channel) === owner) {
          await this.unsubscribe(channel);
        }
      },
    };
  }

  /** End the subscription to `channel` for every handle; it is not re-sent after a reconnect. */
  async unsubscribe(channel: string): Promise<void> {
    const sub = this.subs.get(channel);
    if (!sub) throw new LocalError(`not subscribed to ${channel}`, "not_subscribed");
    this.subs.delete(channel);
    this.changed();
    for (const waiter of sub.waiters) waiter.reject(new ClosedError("unsubscribed"));
    sub.waiters = [];
    if (!this.isOpen() || sub.sentGen !== this.gen) return;
    const done = deferred<undefined>();
    const id = this.newId("u");
    this.requests.set(id, { kind: "unsubscribe", done });
    this.send({ type: "unsubscribe", id, channel });
    await done.promise.catch(() => undefined); // not_subscribed or a lost connection: gone anyway
  }

  /**
   * Publish one event and wait for its `ack`. A publish whose ack was lost with the
   * connection is re-sent on the next one with the same `message_id` (UNI-PUB-38), until the
   * dedup window has passed (UNI-SEC-12). `rate_limited` is not retried by the client.
   */
  publish(channel: string, event: string, data: unknown, options: PublishOptions = {}): Promise<Ack> {
    try {
      this.requireRunning();
      return this.startPublish(channel, event, data, options);
    } catch (error) {
      return Promise.reject(error);
    }
  }

  /** Replace the token in-band (UNI-AUTH-22); without `token` the provider is asked. */
  async refresh(token?: string): Promise<number> {
    if (!this.isOpen()) throw new ClosedError("refresh needs an open connection", this.lastCloseInfo);
    const next = token ?? (await this.resolveToken());
    if (!next) throw new LocalError("no token supplied");
    if (!this.isOpen()) throw new ClosedError("connection lost", this.lastCloseInfo);
    const done = deferred<number>();
    const id = this.newId("r");
    this.requests.set(id, { kind: "refresh", done });
    this.send({ type: "refresh", id, token: next });
    const expiresAt = await done.promise;
    this.lastToken = next;
    return expiresAt;
  }

  // -- helpers for the API --------------------------------------------------------------------

  private requireRunning(): void {
    if (!this.running) throw new ClosedError("call connect() first", this.lastCloseInfo);
  }

  private isOpen(): boolean {
    return this.socket !== undefined && (this.currentState === "open" || this.currentState === "draining");
  }

  private limit(name: string): number | undefined {
    const value = (this.welcomeMessage?.limits as Record<string, unknown> | undefined)?.[name];
    return typeof value === "number" ? value : undefined;
  }

  private newId(prefix: string): string {
    // Never reused within the client's life, so never on one connection (UNI-TR-24).
    const id = `${prefix}${this.nextId}`;
    this.nextId += 1;
    return id;
  }

  private changed(): void {
    this.cachedSnapshot = undefined;
    this.emit("change");
  }

  private setState(state: ClientState): void {
    if (state === this.currentState) return;
    this.currentState = state;
    this.changed();
    const close = state === "waiting" || state === "closed" ? this.lastCloseInfo : undefined;
    this.emit("state", state, close);
  }

  private startPublish(channel: string, event: string, data: unknown, options: PublishOptions): Promise<Ack> {
    const parsed = parseChannel(channel);
    if (parsed.namespace === "$sys") {
      const targeting = (["to", "exclude", "user"] as const).filter((k) => options[k] !== undefined);
      if (targeting.length > 0) {
        throw new LocalError(`a $sys publish cannot carry ${targeting.join(", ")}`); // UNI-CH-15
      }
    }
    const messageId = options.messageId ?? randomId();
    const until = this.rateLimited.get(messageId);
    if (until !== undefined) {
      const remaining = Math.ceil(until - now());
      if (remaining > 0) {
        // Never re-send a rate-limited publish before retry_after_ms (UNI-PUB-32).
        throw new LocalError("publish is still rate limited", "rate_limited", remaining);
      }
      this.rateLimited.delete(messageId);
    }
    const maxTargets = this.limit("max_targets");
    for (const name of ["to", "exclude"] as const) {
      const list = options[name];
      if (list && maxTargets !== undefined && list.length > maxTargets) {
        throw new LocalError(`${name} names more than ${maxTargets} users`); // UNI-LIM-4
      }
    }
    const maxAttrs = this.limit("max_attrs");
    if (options.attrs && maxAttrs !== undefined && Object.keys(options.attrs).length > maxAttrs) {
      throw new LocalError(`more than ${maxAttrs} attrs`); // UNI-LIM-4
    }
    const existing = this.publishes.get(messageId);
    if (existing) return existing.done.promise;
    const fields: Record<string, unknown> = { channel, event, data, message_id: messageId };
    if (options.attrs !== undefined) fields["attrs"] = { ...options.attrs };
    if (options.to !== undefined) fields["to"] = [...options.to];
    if (options.exclude !== undefined) fields["exclude"] = [...options.exclude];
    if (options.excludeSelf) fields["exclude_self"] = true;
    if (options.key !== undefined) fields["key"] = options.key;
    if (options.user !== undefined) fields["user"] = options.user;
    const pending: PendingPublish = {
      fields: fields as PendingPublish["fields"],
      done: deferred<Ack>(),
      sentGen: -1,
    };
    this.publishes.set(messageId, pending);
    if (this.isOpen()) this.sendPublish(pending);
    return pending.done.promise;
  }

  // -- sending --------------------------------------------------------------------------------

  /** One JSON object per text message (UNI-TR-10), within max_message_bytes (UNI-LIM-3). */
  private send(message: ClientMessage): void {
    const socket = this.socket;
    if (!socket) throw new ClosedError("no open connection", this.lastCloseInfo);
    const text = JSON.stringify(message);
    const limit = this.limit("max_message_bytes");
    if (limit !== undefined && utf8Length(text) > limit) {
      throw new LocalError(`${message.type} is larger than ${limit} bytes`, "message_too_large");
    }
    socket.send(text);
  }

  private sendSubscribe(sub: WireSub): void {
    if (sub.sentGen === this.gen) return;
    sub.sentGen = this.gen;
    const id = this.newId("s");
    const message: SubscribeMessage = { type: "subscribe", id, channel: sub.channel };
    if (sub.filter !== undefined) message.filter = sub.filter as SubscribeMessage["filter"];
    if (sub.confirmed) {
      // Resume (UNI-CLOSE-8): every held position the pattern matches (UNI-DEL-20), and
      // `since` for the channels without one (UNI-DEL-21).
      const from: Record<string, Position> = {};
      for (const [name, position] of this.positionMap) {
        if (matches(sub.pattern, name)) from[name] = { epoch: position.epoch, offset: position.offset };
      }
      if (Object.keys(from).length > 0) message.from = from;
      if (sub.ts !== undefined) message.since = sub.ts;
    }
    const plain = message.from === undefined && message.since === undefined;
    this.requests.set(id, { kind: "subscribe", key: sub.channel, plain });
    try {
      this.send(message);
    } catch (error) {
      this.requests.delete(id);
      this.dropSub(sub, error);
    }
  }

  private sendPublish(pending: PendingPublish): void {
    if (pending.sentGen === this.gen) return;
    pending.sentGen = this.gen;
    const messageId = pending.fields.message_id;
    const at = now();
    if (pending.firstSent === undefined) {
      pending.firstSent = at;
    } else if (at - pending.firstSent > this.dedupWindowMs()) {
      // Past the dedup window a re-send would be a new event (UNI-SEC-12): outcome unknown.
      this.failPublish(messageId, new TimeoutError(`publish ${messageId} unconfirmed past the dedup window`));
      return;
    }
    const id = this.newId("p");
    this.requests.set(id, { kind: "publish", key: messageId });
    try {
      this.send({ type: "publish", id, ...pending.fields });
    } catch (error) {
      this.requests.delete(id);
      this.failPublish(messageId, error);
    }
  }

  private dedupWindowMs(): number {
    return this.welcomeMessage?.dedup_window_ms ?? DEFAULT_DEDUP_WINDOW_MS;
  }

  private failPublish(messageId: string, error: unknown): void {
    const pending = this.publishes.get(messageId);
    if (!pending) return;
    this.publishes.delete(messageId);
    pending.done.reject(error);
  }

  private dropSub(sub: WireSub, error: unknown): void {
    if (this.subs.get(sub.channel) === sub) {
      this.subs.delete(sub.channel);
      this.changed();
    }
    for (const waiter of sub.waiters) waiter.reject(error);
    sub.waiters = [];
  }

  // -- the run loop ---------------------------------------------------------------------------

  private start(): void {
    this.running = true;
    this.stopping = false;
    this.attempt = 0; // n is 0 when the client starts (UNI-CLOSE-15)
    this.opened = deferred<WelcomeMessage>();
    this.closedSignal = deferred<CloseInfo>();
    void this.run();
  }

  private async run(): Promise<void> {
    let token: string | undefined;
    try {
      for (;;) {
        await this.waitFloor();
        if (this.stopping) throw new Stop(closeInfo(1000, "normal", true));
        if (token === undefined) {
          token = await this.resolveToken().catch(() => undefined);
          if (!token) {
            // The provider failed: a failed attempt, retried with backoff.
            token = undefined;
            await this.afterClose(closeInfo(1006, "token_unavailable", true), undefined);
            continue;
          }
        }
        this.lastToken = token;
        const { close, openedAt } = await this.connection(token);
        token = undefined;
        if (this.stopping) throw new Stop(close); // the application closed (UNI-CLOSE-7)
        if (close.reconnectClass === "new_token") token = await this.newToken(close);
        await this.afterClose(close, openedAt);
      }
    } catch (error) {
      if (error instanceof Stop) {
        this.finish(error.close);
      } else {
        // A defect must not leave the application waiting on a dead client.
        console.error("unisock: the client stopped on an internal error", error);
        this.finish(closeInfo(1011, "internal_error", true));
      }
    }
  }

  private async resolveToken(): Promise<string | undefined> {
    const source = this.tokenSource;
    const value = typeof source === "string" ? source : await source();
    return typeof value === "string" && value.length > 0 ? value : undefined;
  }

  /** Class new_token: reconnect only with a token the application supplies (UNI-CLOSE-3). */
  private async newToken(close: CloseInfo): Promise<string> {
    this.lastCloseInfo = close;
    if (typeof this.tokenSource === "string") throw new Stop(close);
    const token = await this.resolveToken().catch(() => undefined);
    if (!token) throw new Stop(close);
    // The rejected token again counts as none (UNI-CLOSE-4).
    if ((close.code === 4100 || close.code === 4101) && token === this.lastToken) throw new Stop(close);
    return token;
  }

  /** Act on the close's class (UNI-CLOSE-1, UNI-CLOSE-12): stop, or wait out its delay. */
  private async afterClose(close: CloseInfo, openedAt: number | undefined): Promise<void> {
    this.lastCloseInfo = close;
    const cls = close.reconnectClass;
    // 4001 lands here: a superseded session never reconnects by itself (UNI-CLOSE-2, -24).
    if (cls === "never") throw new Stop(close);
    const params = this.backoff;
    if (openedAt !== undefined && now() - openedAt >= params.reset_after_ms) {
      this.attempt = 0; // the connection was stable (UNI-CLOSE-15)
    }
    const drainWindow = this.drainWindowMs;
    this.drainWindowMs = undefined;
    const reason = parseCloseReason(close.reason);
    let delay: number;
    if (cls === "now") {
      if (close.local) {
        delay = 0; // left a draining server after its drawn delay (UNI-CLOSE-22)
      } else {
        // W: the reason's window, else the drain message's, else cap (UNI-CLOSE-23).
        const window = reason.windowMs ?? drainWindow;
        delay = Math.max(drainDelay(window, params, this.random), reason.retryAfterMs ?? 0);
      }
    } else {
      delay = backoffDelay(params, this.attempt, this.random, reason.retryAfterMs ?? 0); // UNI-CLOSE-13
    }
    this.attempt += 1; // n grows with each reconnection attempt (UNI-CLOSE-15)
    this.reconnects += 1;
    this.nextDelayMs = delay;
    this.setState("waiting");
    this.changed();
    if (delay > 0) await this.sleep(delay);
    this.nextDelayMs = undefined;
    if (this.stopping) throw new Stop(close);
  }

  /** Never two connection attempts closer than F (UNI-CLOSE-16). */
  private async waitFloor(): Promise<void> {
    if (this.lastAttemptAt !== undefined) {
      const remaining = this.lastAttemptAt + floorMs(this.backoff) - now();
      if (remaining > 0) await this.sleep(remaining);
    }
    this.lastAttemptAt = now();
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.timers.delete(timer);
        this.wake = undefined;
        resolve();
      }, ms);
      this.timers.add(timer);
      this.wake = () => {
        clearTimeout(timer);
        this.timers.delete(timer);
        this.wake = undefined;
        resolve();
      };
    });
  }

  private finish(close: CloseInfo): void {
    this.running = false;
    this.lastCloseInfo = close;
    this.setState("closed");
    const failure = new ClosedError(
      close.superseded ? "superseded: the session was opened elsewhere" : `closed: ${close.code} ${close.reason}`,
      close,
    );
    this.opened.reject(failure);
    for (const sub of this.subs.values()) {
      for (const waiter of sub.waiters) waiter.reject(failure);
      sub.waiters = [];
      sub.sentGen = -1; // kept, and re-sent with positions on an explicit connect (UNI-SESS-17)
    }
    for (const messageId of [...this.publishes.keys()]) this.failPublish(messageId, failure);
    this.failRequests(failure);
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
    this.closedSignal.resolve(close);
  }

  private failRequests(error: unknown): void {
    for (const request of this.requests.values()) {
      if (request.kind === "unsubscribe") request.done.resolve(undefined); // dropped with the connection
      else if (request.kind === "refresh") request.done.reject(error);
    }
    this.requests.clear();
  }

  // -- one connection -------------------------------------------------------------------------

  /** Open, authenticate and serve one connection; resolves with how it ended. */
  private connection(token: string): Promise<{ close: CloseInfo; openedAt?: number }> {
    return new Promise((resolve) => {
      this.setState("connecting");
      this.localClose = undefined;
      this.drainWindowMs = undefined;
      let socket: WebSocketLike;
      try {
        socket = new this.WS(this.url, this.protocols);
      } catch {
        resolve({ close: closeInfo(1006, "connect_failed", true) });
        return;
      }
      this.gen += 1;
      this.socket = socket;
      socket.binaryType = "arraybuffer";
      let openedAt: number | undefined;
      let ended = false;
      let silence: ReturnType<typeof setTimeout> | undefined;
      let pinger: ReturnType<typeof setInterval> | undefined;
      const timer = (ms: number, fn: () => void): ReturnType<typeof setTimeout> => {
        const handle = setTimeout(() => {
          this.timers.delete(handle);
          fn();
        }, ms);
        this.timers.add(handle);
        return handle;
      };
      const end = (close: CloseInfo): void => {
        if (ended) return;
        ended = true;
        socket.onopen = socket.onmessage = socket.onclose = null;
        socket.onerror = () => undefined;
        clearTimeout(welcomeTimer);
        clearTimeout(silence);
        clearInterval(pinger);
        if (this.socket === socket) this.socket = undefined;
        // Replies of this connection can no longer arrive: re-send (subscribe, publish) or fail.
        this.failRequests(new ClosedError("connection lost", close));
        resolve({ close, openedAt });
      };
      const abort = (close: CloseInfo): void => {
        this.localClose = close;
        abortSocket(socket, 4201, "heartbeat_timeout");
        end(close);
      };
      // The opening handshake gets auth_timeout_ms too; welcome then gets auth_timeout_ms from
      // the moment hello is sent, or the attempt failed (UNI-HB-12).
      let welcomeTimer = timer(this.authTimeoutMs, () => abort(closeInfo(1006, "connect_timeout", true)));
      const armSilence = (): void => {
        clearTimeout(silence);
        const heartbeat = this.welcomeMessage?.heartbeat;
        if (!heartbeat) return;
        // Nothing at all for interval + timeout: the server is dead (UNI-HB-9, UNI-HB-10).
        silence = timer(heartbeat.interval_ms + heartbeat.timeout_ms, () =>
          abort(closeInfo(1006, "heartbeat_timeout", true)),
        );
      };
      socket.onerror = () => undefined;
      socket.onopen = () => {
        if (socket.protocol !== PROTOCOL) {
          // No hello on a connection that did not select unisock.v1 (UNI-TR-6).
          this.localClose = closeInfo(1006, "no_subprotocol", true);
          closeWith(socket, 1002, 4000, "protocol_error");
          end(this.localClose);
          return;
        }
        // hello is the first and, until welcome, the only message (UNI-LC-2, UNI-LC-3).
        const hello: HelloMessage = { type: "hello", token, client: this.info };
        socket.send(JSON.stringify(hello));
        clearTimeout(welcomeTimer);
        welcomeTimer = timer(this.authTimeoutMs, () => abort(closeInfo(1006, "welcome_timeout", true)));
      };
      socket.onmessage = (event) => {
        if (typeof event.data !== "string") {
          // Text frames only (UNI-TR-12): 1003, or 4000 where the interface refuses 1003.
          this.localClose = closeInfo(1003, "unsupported_data", true);
          closeWith(socket, 1003, 4000, "unsupported_data");
          return;
        }
        if (this.localClose) return; // closing: nothing more is processed
        const message = decode(event.data);
        if (openedAt === undefined) {
          if (!message || message.type !== "welcome") {
            // Not a valid welcome: close, send nothing more, and retry as after a lost
            // connection, with backoff (UNI-LC-21); 4000 where the interface refuses 1002.
            this.localClose = closeInfo(1006, "bad_welcome", true);
            closeWith(socket, 1002, 4000, "protocol_error");
            return;
          }
          clearTimeout(welcomeTimer);
          openedAt = now();
          this.onWelcome(message);
          armSilence();
          if (this.measureRtt) {
            // One ping now and one per interval_ms (UNI-HB-13, UNI-HB-14).
            this.ping();
            pinger = setInterval(() => this.ping(), message.heartbeat.interval_ms);
          }
          return;
        }
        armSilence(); // any message proves the server alive (UNI-HB-10)
        if (!message) return; // not a valid message of a known type (UNI-TR-22)
        try {
          this.dispatch(message);
        } catch (error) {
          console.error("unisock: failed to handle a message", error);
        }
      };
      socket.onclose = (event) => {
        end(this.localClose ?? closeInfo(event.code || 1006, event.reason ?? "", event.code === 1006));
      };
    });
  }

  private ping(): void {
    if (!this.isOpen()) return;
    const id = this.newId("k");
    this.requests.set(id, { kind: "ping", sentAt: now() });
    this.send({ type: "ping", id });
  }

  private onWelcome(welcome: WelcomeMessage): void {
    // The most recent welcome replaces every default (UNI-LC-15, UNI-HB-11, UNI-CLOSE-17).
    // Unknown feature names are kept but never acted on (UNI-LC-14).
    this.welcomeMessage = welcome;
    this.backoff = { ...welcome.backoff };
    this.authTimeoutMs = this.limit("auth_timeout_ms") ?? DEFAULT_AUTH_TIMEOUT_MS;
    this.setState("open");
    for (const sub of [...this.subs.values()]) this.sendSubscribe(sub);
    for (const pending of [...this.publishes.values()]) this.sendPublish(pending);
    this.opened.resolve(welcome);
    this.changed();
  }

  // -- incoming messages ----------------------------------------------------------------------

  private dispatch(message: ServerMessage): void {
    switch (message.type) {
      case "ping": {
        // Echo nonce and id (UNI-HB-8).
        const pong: PongMessage = { type: "pong" };
        if (message.id !== undefined) pong.id = message.id;
        if (message.nonce !== undefined) pong.nonce = message.nonce;
        this.send(pong);
        return;
      }
      case "pong":
        return this.onPong(message.id);
      case "event":
        return this.onEvent(message);
      case "gap":
        return this.onGap(message);
      case "subscribed":
        return this.onSubscribed(message);
      case "unsubscribed":
        return this.onUnsubscribed(message);
      case "ack":
        return this.onAck(message);
      case "error":
        return this.onError(message);
      case "refreshed": {
        const request = this.take(message.id, "refresh");
        request?.done.resolve(message.expires_at);
        return;
      }
      case "token_expiring":
        // Refresh in-band, never by reconnecting (UNI-AUTH-24); a failure lets it expire.
        if (typeof this.tokenSource !== "string") this.refresh().catch(() => undefined);
        return;
      case "drain":
        return this.onDrain(message.window_ms);
      default:
        return; // a second welcome changes nothing
    }
  }

  private take<K extends Request["kind"]>(id: unknown, kind: K): Extract<Request, { kind: K }> | undefined {
    if (typeof id !== "string") return undefined;
    const request = this.requests.get(id);
    if (!request || request.kind !== kind) return undefined;
    this.requests.delete(id);
    return request as Extract<Request, { kind: K }>;
  }

  private onPong(id: string | undefined): void {
    // A pong for no ping of ours is ignored (UNI-HB-15).
    const request = this.take(id, "ping");
    if (!request) return;
    this.rttMs = Math.round(now() - request.sentAt);
    this.changed();
  }

  private onEvent(message: EventMessage): void {
    const { channel, epoch, offset } = message;
    const active = [...this.subs.values()].filter(
      (sub) => sub.activeGen === this.gen && matches(sub.pattern, channel),
    );
    if (active.length === 0) return; // only between subscribed and unsubscribed (UNI-SUB-15)
    const known = this.positionMap.get(channel);
    // Already seen (UNI-DEL-30); epochs compare by equality only (UNI-DEL-10).
    if (known && known.epoch === epoch && offset <= known.offset) return;
    if (known && known.epoch !== epoch) {
      this.resync({ channel, epoch, offset: offset - 1, reason: "epoch_changed" }, active); // UNI-DEL-32
    }
    // Skipped offsets are not a loss (UNI-DEL-33); `coalesced` offsets lie below `offset`
    // and so count as seen, never as a gap (UNI-DEL-28).
    this.positionMap.set(channel, { epoch, offset });
    for (const sub of active) sub.ts = Math.max(sub.ts ?? 0, message.ts);
    const delivered: UnisockEvent = {
      channel,
      epoch,
      offset,
      event: message.event,
      data: message.data,
      messageId: message.message_id,
      ts: message.ts,
      ...(message.attrs !== undefined ? { attrs: message.attrs } : {}),
      ...(message.publisher !== undefined ? { publisher: message.publisher } : {}),
      ...(message.coalesced !== undefined ? { coalesced: message.coalesced } : {}),
    };
    this.changed();
    this.emit("event", delivered);
    // Each subscription's listeners get only what its own filter selects: another,
    // broader subscription may be why the event reached this connection.
    const attrs = message.attrs ?? {};
    for (const sub of active) {
      if (sub.filter !== undefined && !evaluate(sub.filter, message.event, attrs)) continue;
      for (const listener of sub.listeners) call(listener.onEvent, delivered);
    }
  }

  private onGap(message: GapMessage): void {
    const { channel, epoch, offset, reason } = message;
    this.positionMap.set(channel, { epoch, offset }); // UNI-DEL-31
    const active = [...this.subs.values()].filter((sub) => matches(sub.pattern, channel));
    this.resync({ channel, epoch, offset, reason }, active);
  }

  private resync(resync: Resync, subs: WireSub[]): void {
    this.resyncCount += 1;
    this.changed();
    this.emit("resync", resync);
    for (const sub of subs) for (const listener of sub.listeners) call(listener.onResync, resync);
  }

  private onSubscribed(message: SubscribedMessage): void {
    const request = this.take(message.id, "subscribe");
    if (!request) return;
    const sub = this.subs.get(request.key);
    if (!sub) return;
    sub.confirmed = true;
    sub.activeGen = this.gen;
    sub.ts = Math.max(sub.ts ?? 0, message.ts);
    const head = message.position;
    if (head && isExact(sub.pattern)) {
      sub.position = { epoch: head.epoch, offset: head.offset };
      const known = this.positionMap.get(sub.channel);
      // A plain subscribe starts at the head (UNI-DEL-29); a resume keeps its own position.
      if (request.plain && (!known || known.epoch !== head.epoch || known.offset < head.offset)) {
        this.positionMap.set(sub.channel, sub.position);
        this.changed();
      }
    }
    const snapshot = snapshotOf(sub);
    for (const waiter of sub.waiters) waiter.resolve(snapshot);
    sub.waiters = [];
  }

  private onUnsubscribed(message: UnsubscribedMessage): void {
    if (message.id !== undefined) {
      this.take(message.id, "unsubscribe")?.done.resolve(undefined);
      return;
    }
    // Revoked by the server, e.g. grants narrowed by a refresh: never re-sent (UNI-SUB-16).
    const sub = this.subs.get(message.channel);
    if (!sub) return;
    this.endSub(sub, message.reason);
  }

  private endSub(sub: WireSub, reason: string): void {
    this.dropSub(sub, new ClosedError(`subscription ${reason}`));
    const ended: SubscriptionEnded = { channel: sub.channel, reason };
    this.emit("subscriptionEnded", ended);
    for (const listener of sub.listeners) call(listener.onEnd, ended);
  }

  private onAck(message: AckMessage): void {
    const request = this.take(message.id, "publish");
    if (!request) return;
    const pending = this.publishes.get(request.key);
    if (!pending) return;
    this.publishes.delete(request.key);
    pending.done.resolve({
      channel: message.channel,
      messageId: message.message_id,
      epoch: message.epoch,
      offset: message.offset,
      duplicate: message.duplicate,
    });
  }

  private onError(message: ErrorMessage): void {
    // Matched to a request by id only; an error without id resolves none (UNI-ERR-12).
    if (message.id === undefined) return;
    const request = this.requests.get(message.id);
    if (!request) return;
    this.requests.delete(message.id);
    // Handled by code, never by message text (UNI-ERR-14); unknown codes fail the request
    // and keep the connection (UNI-ERR-13).
    const error = new ServerError(
      message.code,
      message.message,
      message.id,
      message.retry_after_ms,
      message.details as Record<string, unknown> | undefined,
    );
    switch (request.kind) {
      case "publish":
        if (message.code === "rate_limited") {
          this.rateLimited.set(request.key, now() + (message.retry_after_ms ?? 0));
        }
        this.failPublish(request.key, error);
        return;
      case "subscribe": {
        const sub = this.subs.get(request.key);
        if (!sub) return;
        // A re-sent subscription the server now refuses: tell the application.
        if (sub.confirmed) this.endSub(sub, message.code);
        else this.dropSub(sub, error);
        return;
      }
      case "unsubscribe":
      case "refresh":
        request.done.reject(error);
        return;
      default:
        return;
    }
  }

  private onDrain(windowMs: number): void {
    // Leave at max(F, U(0, window_ms)) after receipt (UNI-CLOSE-22).
    if (this.currentState === "draining") return;
    const socket = this.socket;
    if (!socket) return;
    this.setState("draining");
    this.drainWindowMs = windowMs;
    const delay = drainDelay(windowMs, this.backoff, this.random);
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      if (this.socket !== socket) return;
      // Close the old connection with 1000 before opening the next (UNI-SESS-5); recorded as
      // a local 4300 so that its class is `now` with no further delay.
      this.localClose = closeInfo(4300, "drain", true);
      closeWith(socket, 1000, 1000, "drain");
    }, delay);
    this.timers.add(timer);
  }
}

function snapshotOf(sub: WireSub): Subscribed {
  return { channel: sub.channel, ts: sub.ts ?? 0, ...(sub.position ? { position: sub.position } : {}) };
}

function call<T>(fn: ((value: T) => void) | undefined, value: T): void {
  if (!fn) return;
  try {
    fn(value);
  } catch (error) {
    console.error("unisock: a subscription callback failed", error);
  }
}

export { ChannelError, UnisockError };
