/**
 * Channel names and patterns (spec section 4): parsing, for local refusal (UNI-CH-7), and
 * matching, to route events to subscriptions (UNI-SUB-15) and to build `from` (UNI-DEL-20).
 * Names are never transformed (UNI-CH-6): a string is sent unchanged or refused.
 */

export const MAX_NAME_OCTETS = 255;
export const MAX_SEGMENTS = 16;

const SEGMENT = /^[a-z0-9_-]{1,64}$/;
const NAMESPACES = new Set(["$me", "$sys"]);

/** A parsed pattern: its namespace token ("" for tenant channels) and its tokens. */
export interface Pattern {
  readonly text: string;
  readonly namespace: string;
  readonly tokens: readonly string[];
}

/** A channel name or pattern the grammar refuses; nothing was sent. */
export class ChannelError extends Error {
  override readonly name = "ChannelError";
}

function split(text: unknown, what: string): { namespace: string; tokens: string[] } {
  if (typeof text !== "string" || text.length === 0) throw new ChannelError(`empty ${what}`);
  // eslint-disable-next-line no-control-regex
  if (!/^[\x00-\x7f]*$/.test(text)) throw new ChannelError(`${what} must be ASCII`);
  if (text.length > MAX_NAME_OCTETS) throw new ChannelError(`${what} is too long`);
  const tokens = text.split(".");
  let namespace = "";
  if (NAMESPACES.has(tokens[0] ?? "")) {
    namespace = tokens.shift() ?? "";
    if (namespace === "$sys" && tokens.length === 0) throw new ChannelError("$sys needs a segment");
  }
  if (tokens.length > MAX_SEGMENTS) throw new ChannelError(`${what} has too many segments`);
  return { namespace, tokens };
}

/** Parse a subscription pattern: `*` is one segment, a final `>` one or more. */
export function parsePattern(text: string): Pattern {
  const { namespace, tokens } = split(text, "pattern");
  tokens.forEach((token, index) => {
    if (token === "*") return;
    if (token === ">") {
      if (index !== tokens.length - 1) throw new ChannelError("'>' is allowed only last");
      return;
    }
    if (!SEGMENT.test(token)) throw new ChannelError(`invalid segment ${JSON.stringify(token)}`);
  });
  return { text, namespace, tokens };
}

/** Parse a concrete channel name (no wildcards). */
export function parseChannel(text: string): Pattern {
  const { namespace, tokens } = split(text, "channel");
  for (const token of tokens) {
    if (!SEGMENT.test(token)) throw new ChannelError(`invalid segment ${JSON.stringify(token)}`);
  }
  return { text, namespace, tokens };
}

/** Whether `pattern` matches the channel name `channel`; false for names that do not parse. */
export function matches(pattern: Pattern, channel: string): boolean {
  let parsed: Pattern;
  try {
    parsed = parseChannel(channel);
  } catch {
    return false;
  }
  if (parsed.namespace !== pattern.namespace) return false;
  const { tokens } = pattern;
  const segments = parsed.tokens;
  const tail = tokens.length > 0 && tokens[tokens.length - 1] === ">";
  if (tail ? segments.length < tokens.length : segments.length !== tokens.length) return false;
  const count = tail ? tokens.length - 1 : tokens.length;
  for (let i = 0; i < count; i += 1) {
    if (tokens[i] !== "*" && tokens[i] !== segments[i]) return false;
  }
  return true;
}

/** Whether the pattern contains no wildcard (its `subscribed` carries the channel head). */
export function isExact(pattern: Pattern): boolean {
  return !pattern.tokens.some((token) => token === "*" || token === ">");
}
