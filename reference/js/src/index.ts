/**
 * Unisock client for browsers and Node.js 20+: one WebSocket per session for every
 * subscription, resumed across reconnects. No runtime dependency: the browser's WebSocket
 * is used, or any constructor with the same interface (`ws` on Node.js 20).
 */
export { UnisockClient, PROTOCOL, VERSION } from "./client.js";
export type {
  ClientEvents,
  ClientOptions,
  PublishOptions,
  SubscribeOptions,
  Subscription,
  TokenProvider,
} from "./client.js";
export { ClosedError, LocalError, ServerError, TimeoutError, UnisockError } from "./errors.js";
export { ChannelError, matches, parseChannel, parsePattern } from "./channels.js";
export { evaluate as evaluateFilter } from "./filter.js";
export { closeClass, closeName, parseCloseReason } from "./closecodes.js";
export type { ReconnectClass } from "./closecodes.js";
export { backoffBounds, backoffDelay, drainDelay, floorMs, DEFAULT_BACKOFF } from "./backoff.js";
export type { BackoffParams } from "./backoff.js";
export type { WebSocketConstructor, WebSocketLike } from "./socket.js";
export type * from "./types.js";
export type * as wire from "./generated/messages.js";
