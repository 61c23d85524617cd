/**
 * Close codes and their reconnection classes (spec 9.1, 9.2), from the generated registry.
 */
import { CLOSE_CODES } from "./generated/closecodes.js";

export type ReconnectClass = "never" | "new_token" | "backoff" | "now";

const BY_CODE = new Map<number, { name: string; cls: ReconnectClass }>(
  CLOSE_CODES.codes.map((entry) => [entry.code, { name: entry.name, cls: entry.class }]),
);

/** The class of a close: the registry, then the 4000-4399 ranges, else backoff (UNI-CLOSE-1). */
export function closeClass(code: number): ReconnectClass {
  const known = BY_CODE.get(code);
  if (known) return known.cls;
  for (const range of CLOSE_CODES.ranges) {
    if (code >= range.from && code <= range.to) return range.class;
  }
  return CLOSE_CODES.default_class;
}

/** The registry name of a code, or "" when it is not listed. */
export function closeName(code: number): string {
  return BY_CODE.get(code)?.name ?? "";
}

export interface CloseReason {
  readonly name: string;
  readonly retryAfterMs?: number;
  readonly windowMs?: number;
}

/**
 * Parse `name;retry_after_ms=N;window_ms=N`; unknown parts are ignored (UNI-CLOSE-12).
 */
export function parseCloseReason(reason: string): CloseReason {
  const [name = "", ...params] = reason.split(";");
  let retryAfterMs: number | undefined;
  let windowMs: number | undefined;
  for (const param of params) {
    const match = /^(retry_after_ms|window_ms)=(0|[1-9][0-9]{0,15})$/.exec(param.trim());
    if (!match) continue;
    const value = Number(match[2]);
    if (match[1] === "retry_after_ms") retryAfterMs = value;
    else windowMs = value;
  }
  return { name: /^[a-z][a-z0-9_]*$/.test(name) ? name : "", retryAfterMs, windowMs };
}
