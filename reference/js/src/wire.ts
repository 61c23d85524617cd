/**
 * Decoding server messages. A message of a known type is handed on only when the members the
 * client reads have the types the schemas give them; unknown members are ignored (UNI-TR-21)
 * and unknown types are dropped (UNI-TR-22). `welcome` is validated against its whole schema:
 * a first message that is not a valid welcome ends the attempt (UNI-LC-21). The message
 * types are generated from schemas/v1 (src/generated), so a schema change that breaks the
 * client breaks its build.
 */
import type {
  AckMessage,
  DrainMessage,
  ErrorMessage,
  EventMessage,
  GapMessage,
  HelloMessage,
  PingMessage,
  PongMessage,
  PublishMessage,
  RefreshMessage,
  RefreshedMessage,
  SubscribeMessage,
  SubscribedMessage,
  TokenExpiringMessage,
  UnsubscribeMessage,
  UnsubscribedMessage,
  WelcomeMessage,
} from "./generated/messages.js";
import { WELCOME_SCHEMA } from "./generated/welcome.js";
import { validates } from "./schema.js";

export type ServerMessage =
  | AckMessage
  | DrainMessage
  | ErrorMessage
  | EventMessage
  | GapMessage
  | PingMessage
  | PongMessage
  | RefreshedMessage
  | SubscribedMessage
  | TokenExpiringMessage
  | UnsubscribedMessage
  | WelcomeMessage;

/** What the client sends: the generated types of the client messages. */
export type ClientMessage =
  | HelloMessage
  | SubscribeMessage
  | UnsubscribeMessage
  | PublishMessage
  | RefreshMessage
  | PingMessage
  | PongMessage;

type Kind = "string" | "int" | "bool" | "object" | "array" | "any";
type Shape = Record<string, `${Kind}` | `${Kind}?`>;

const POSITION: Shape = { epoch: "string", offset: "int" };
const SHAPES: Record<Exclude<ServerMessage["type"], "welcome">, Shape> = {
  refreshed: { id: "string", expires_at: "int" },
  subscribed: { id: "string", channel: "string", ts: "int", position: "object?" },
  unsubscribed: { id: "string?", channel: "string", reason: "string" },
  ack: {
    id: "string",
    channel: "string",
    message_id: "string",
    epoch: "string",
    offset: "int",
    duplicate: "bool",
  },
  event: {
    channel: "string",
    epoch: "string",
    offset: "int",
    event: "string",
    data: "any",
    message_id: "string",
    ts: "int",
    attrs: "object?",
    publisher: "string?",
    coalesced: "array?",
  },
  gap: { channel: "string", epoch: "string", offset: "int", reason: "string" },
  error: { id: "string?", code: "string", message: "string", retry_after_ms: "int?", details: "object?" },
  token_expiring: { expires_at: "int" },
  drain: { window_ms: "int" },
  ping: { id: "string?", nonce: "string?" },
  pong: { id: "string?", nonce: "string?" },
};
const NESTED: Record<string, Record<string, Shape>> = {
  subscribed: { position: POSITION },
};

function fits(value: unknown, kind: Kind): boolean {
  switch (kind) {
    case "string":
      return typeof value === "string";
    case "int":
      return typeof value === "number" && Number.isSafeInteger(value) && value >= 0;
    case "bool":
      return typeof value === "boolean";
    case "object":
      return typeof value === "object" && value !== null && !Array.isArray(value);
    case "array":
      return Array.isArray(value);
    default:
      return true;
  }
}

function conforms(message: Record<string, unknown>, shape: Shape): boolean {
  for (const [key, spec] of Object.entries(shape)) {
    const optional = spec.endsWith("?");
    const kind = (optional ? spec.slice(0, -1) : spec) as Kind;
    if (!(key in message)) {
      if (optional || kind === "any") continue;
      return false;
    }
    if (!fits(message[key], kind)) return false;
  }
  return true;
}

/**
 * The server message in `text`, or undefined when it is not a JSON object of a known type
 * whose members have the expected types.
 */
export function decode(text: string): ServerMessage | undefined {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (!fits(value, "object")) return undefined;
  const message = value as Record<string, unknown>;
  const type = message["type"];
  if (type === "welcome") {
    return validates(WELCOME_SCHEMA, message) ? (message as unknown as WelcomeMessage) : undefined;
  }
  if (typeof type !== "string" || !Object.hasOwn(SHAPES, type)) return undefined;
  if (!conforms(message, SHAPES[type as keyof typeof SHAPES])) return undefined;
  const nested = NESTED[type] ?? {};
  for (const [key, shape] of Object.entries(nested)) {
    const inner = message[key];
    if (inner !== undefined && !conforms(inner as Record<string, unknown>, shape)) return undefined;
  }
  if (type === "event" && "data" in message === false) return undefined;
  return message as unknown as ServerMessage;
}

/** UTF-8 length in octets: the unit of max_message_bytes (UNI-LIM-3). */
export function utf8Length(text: string): number {
  return new TextEncoder().encode(text).length;
}

/** Nodes of a filter: every JSON object in it (spec 5.5.1). */
export function filterNodes(value: unknown): number {
  if (Array.isArray(value)) return value.reduce((sum: number, item) => sum + filterNodes(item), 0);
  if (typeof value === "object" && value !== null) {
    return 1 + Object.values(value).reduce((sum: number, item) => sum + filterNodes(item), 0);
  }
  return 0;
}

/** A random UUID (v4) from the platform's CSPRNG; works outside secure contexts too. */
export function randomId(): string {
  const bytes = new Uint8Array(16);
  globalThis.crypto.getRandomValues(bytes);
  bytes[6] = ((bytes[6] ?? 0) & 0x0f) | 0x40;
  bytes[8] = ((bytes[8] ?? 0) & 0x3f) | 0x80;
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** A uniform float in [0, 1) from the platform's CSPRNG: independent per instance (UNI-CLOSE-14). */
export function cryptoRandom(): number {
  const word = new Uint32Array(2);
  globalThis.crypto.getRandomValues(word);
  // 53 random bits.
  return ((word[0] ?? 0) * 2 ** 21 + ((word[1] ?? 0) >>> 11)) / 2 ** 53;
}
