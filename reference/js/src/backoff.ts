/**
 * Reconnection timing (spec 9.4, 9.5): exponential backoff with full jitter and a hard floor.
 *
 *   delay = max(F, R, U(0, min(cap_ms, base_ms * 2^n)))   with F = max(100, floor_ms)
 */

export interface BackoffParams {
  readonly base_ms: number;
  readonly cap_ms: number;
  readonly floor_ms: number;
  readonly reset_after_ms: number;
}

/** The values in force before any `welcome` (UNI-CLOSE-17). */
export const DEFAULT_BACKOFF: BackoffParams = Object.freeze({
  base_ms: 500,
  cap_ms: 30000,
  floor_ms: 250,
  reset_after_ms: 10000,
});

export const ABSOLUTE_FLOOR_MS = 100;

/** F: no two connection attempts closer than this, whatever the inputs (UNI-CLOSE-16). */
export function floorMs(params: BackoffParams): number {
  return Math.max(ABSOLUTE_FLOOR_MS, params.floor_ms);
}

/** min(cap_ms, base_ms * 2^attempt), without overflow for large attempts. */
export function ceilingMs(params: BackoffParams, attempt: number): number {
  if (attempt >= 52) return params.cap_ms;
  return Math.min(params.cap_ms, params.base_ms * 2 ** attempt);
}

/** A uniform integer in [0, high]: the full range, both ends included (UNI-CLOSE-13). */
export function uniform(random: () => number, high: number): number {
  return Math.min(high, Math.floor(random() * (high + 1)));
}

/** The inclusive range every delay of `attempt` falls in. */
export function backoffBounds(
  params: BackoffParams,
  attempt: number,
  retryAfterMs = 0,
): [number, number] {
  const low = Math.max(floorMs(params), retryAfterMs);
  return [low, Math.max(low, ceilingMs(params, attempt))];
}

/** The delay before reconnection attempt `attempt` (classes backoff and new_token). */
export function backoffDelay(
  params: BackoffParams,
  attempt: number,
  random: () => number,
  retryAfterMs = 0,
): number {
  const low = Math.max(floorMs(params), retryAfterMs);
  return Math.max(low, uniform(random, ceilingMs(params, attempt)));
}

/** The delay of class `now` and of leaving a draining server: max(F, U(0, W)). */
export function drainDelay(
  windowMs: number | undefined,
  params: BackoffParams,
  random: () => number,
): number {
  const window = windowMs ?? params.cap_ms;
  return Math.max(floorMs(params), uniform(random, Math.max(0, window)));
}
