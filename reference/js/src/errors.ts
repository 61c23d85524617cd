/**
 * Failures the client reports to the application. `ServerError` carries an `error` reply's
 * code (UNI-ERR-13: unknown codes included); the others are the client's own findings.
 */
import type { CloseInfo } from "./types.js";

/** The root of every failure this package reports. */
export class UnisockError extends Error {
  override name = "UnisockError";
}

/** The server answered the request with `error` (matched by `id` only, UNI-ERR-12). */
export class ServerError extends UnisockError {
  override name = "ServerError";
  constructor(
    readonly code: string,
    message: string,
    readonly requestId: string,
    readonly retryAfterMs?: number,
    readonly details?: Record<string, unknown>,
  ) {
    super(message || code);
  }
}

/** The client refused the request before sending it (a limit, a pending retry_after_ms). */
export class LocalError extends UnisockError {
  override name = "LocalError";
  constructor(
    message: string,
    readonly code?: string,
    readonly retryAfterMs?: number,
  ) {
    super(message);
  }
}

/** The client has stopped (or was never started); `close` says how the last connection ended. */
export class ClosedError extends UnisockError {
  override name = "ClosedError";
  constructor(
    message: string,
    readonly close?: CloseInfo,
  ) {
    super(message);
  }
}

/** No answer in time, or an outcome that cannot be known any more (UNI-PUB-37, UNI-SEC-12). */
export class TimeoutError extends UnisockError {
  override name = "TimeoutError";
}
