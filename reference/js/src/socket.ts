/**
 * The WebSocket the client runs on: the browser's native one by default, or any constructor
 * with the same interface (for example the `ws` package on Node.js 20, which has no global
 * WebSocket). The client uses only what the WHATWG WebSocket interface offers.
 */

export interface MessageLike {
  readonly data: unknown;
}
export interface CloseLike {
  readonly code: number;
  readonly reason: string;
}

export interface WebSocketLike {
  readonly protocol: string;
  binaryType: string;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: MessageLike) => void) | null;
  onclose: ((event: CloseLike) => void) | null;
  onerror: ((event: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  /** Drops the TCP connection without a closing handshake, where the implementation can. */
  terminate?: () => void;
}

export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

/** The platform's WebSocket, if it has one. */
export function nativeWebSocket(): WebSocketConstructor | undefined {
  const ctor = (globalThis as { WebSocket?: unknown }).WebSocket;
  return typeof ctor === "function" ? (ctor as WebSocketConstructor) : undefined;
}

/**
 * Close with `code`, or with `fallback` where the implementation refuses `code`: the browser
 * interface accepts only 1000 and 3000-4999 (spec 1.4, UNI-TR-12).
 */
export function closeWith(socket: WebSocketLike, code: number, fallback: number, reason: string): void {
  try {
    socket.close(code, reason);
  } catch {
    try {
      socket.close(fallback, reason);
    } catch {
      // Already closing.
    }
  }
}

/** End the connection now, without waiting for a closing handshake (UNI-HB-9). */
export function abortSocket(socket: WebSocketLike, code: number, reason: string): void {
  if (typeof socket.terminate === "function") {
    socket.terminate();
    return;
  }
  // A browser cannot drop TCP; it starts the closing handshake, and the client does not wait.
  closeWith(socket, code, code, reason);
}
