/** Values the client hands to the application. */
import type { ReconnectClass } from "./closecodes.js";
import type { WelcomeMessage } from "./generated/messages.js";

export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };
export type AttrValue = string | number | boolean | null;
export type Filter = Record<string, unknown>;

/** Where the client is. `waiting`: between connections, waiting out a backoff or drain delay. */
export type ClientState = "idle" | "connecting" | "open" | "draining" | "waiting" | "closed";

/** A point in a channel's sequence. Epochs are opaque, compared for equality only (UNI-DEL-10). */
export interface Position {
  readonly epoch: string;
  readonly offset: number;
}

/** How a connection ended. `local`: the client ended it, or none was established. */
export interface CloseInfo {
  readonly code: number;
  readonly reason: string;
  readonly local: boolean;
  /** A 4001 from the server: the session was opened elsewhere (UNI-CLOSE-24). */
  readonly superseded: boolean;
  readonly reconnectClass: ReconnectClass;
}

/** A delivered event, after deduplication (UNI-DEL-30). */
export interface UnisockEvent {
  readonly channel: string;
  readonly epoch: string;
  readonly offset: number;
  readonly event: string;
  readonly data: unknown;
  readonly messageId: string;
  readonly ts: number;
  readonly attrs?: Readonly<Record<string, AttrValue>>;
  readonly publisher?: string;
  /** Offsets this event superseded on a slow connection: merged, not lost (UNI-DEL-28). */
  readonly coalesced?: readonly number[];
}

/**
 * The application's view of `channel` may be incomplete: reload it (UNI-DEL-31, UNI-DEL-32).
 * Delivery continues after (`epoch`, `offset`).
 */
export interface Resync {
  readonly channel: string;
  readonly epoch: string;
  readonly offset: number;
  readonly reason: string;
}

/** A subscription ended without the application asking (revoked, or refused on resume). */
export interface SubscriptionEnded {
  readonly channel: string;
  readonly reason: string;
}

/** A confirmed subscription; `position` is the channel head for patterns without wildcards. */
export interface Subscribed {
  readonly channel: string;
  readonly ts: number;
  readonly position?: Position;
}

/** A publish was sequenced and stored; `duplicate` when its message_id was seen before. */
export interface Ack {
  readonly channel: string;
  readonly messageId: string;
  readonly epoch: string;
  readonly offset: number;
  readonly duplicate: boolean;
}

export type Welcome = WelcomeMessage;

/** What a connection panel shows: the client's state and its counters. */
export interface ConnectionSnapshot {
  readonly state: ClientState;
  readonly lastClose?: CloseInfo;
  /** Attempt counter n of the backoff formula (UNI-CLOSE-15). */
  readonly attempt: number;
  /** Reconnections since the client was started. */
  readonly reconnects: number;
  /** The delay being waited out in state `waiting`, in milliseconds. */
  readonly nextDelayMs?: number;
  readonly connectionId?: string;
  readonly positions: Readonly<Record<string, Position>>;
  readonly resyncs: number;
  readonly rttMs?: number;
  readonly subscriptions: readonly string[];
}
