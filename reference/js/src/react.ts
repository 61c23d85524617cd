/**
 * React bindings (optional entry point `@unisock/client/react`): one client for the whole
 * page, shared through context, and hooks that bind components to it in a line each.
 */
import {
  createContext,
  createElement,
  useContext,
  useEffect,
  useRef,
  useState,
  useSyncExternalStore,
  type ReactNode,
} from "react";
import type { SubscribeOptions, UnisockClient } from "./client.js";
import type { ConnectionSnapshot, Filter, Resync, Subscribed, SubscriptionEnded, UnisockEvent } from "./types.js";

const ClientContext = createContext<UnisockClient | null>(null);

/** Makes `client` the one every hook below this element uses. */
export function UnisockProvider(props: { client: UnisockClient; children?: ReactNode }): ReactNode {
  return createElement(ClientContext.Provider, { value: props.client }, props.children);
}

/** The client of the nearest {@link UnisockProvider}. */
export function useUnisockClient(): UnisockClient {
  const client = useContext(ClientContext);
  if (!client) throw new Error("useUnisock needs a <UnisockProvider client={...}> above it");
  return client;
}

/** The connection's state and counters, re-rendering on every change. */
export function useUnisock(): ConnectionSnapshot {
  const client = useUnisockClient();
  return useSyncExternalStore(
    (onChange) => client.on("change", onChange),
    () => client.snapshot(),
  );
}

export interface ChannelHandlers {
  readonly onEvent?: (event: UnisockEvent) => void;
  readonly onResync?: (resync: Resync) => void;
  readonly onEnd?: (ended: SubscriptionEnded) => void;
}

export interface ChannelStatus {
  /** The server confirmed the subscription on the current connection. */
  readonly ready?: Subscribed;
  readonly error?: Error;
}

/**
 * Subscribe to `pattern` (with an optional server-side `filter`) while the component is
 * mounted. Handlers may change between renders without resubscribing; the subscription is
 * shared with other components using the same pattern and filter.
 */
export function useChannel(pattern: string, handlers: ChannelHandlers, filter?: Filter): ChannelStatus {
  const client = useUnisockClient();
  const latest = useRef(handlers);
  latest.current = handlers;
  const [status, setStatus] = useState<ChannelStatus>({});
  const filterKey = JSON.stringify(filter ?? null);
  useEffect(() => {
    const options: SubscribeOptions = {
      ...(filter ? { filter } : {}),
      onEvent: (event) => latest.current.onEvent?.(event),
      onResync: (resync) => latest.current.onResync?.(resync),
      onEnd: (ended) => latest.current.onEnd?.(ended),
    };
    let live = true;
    let subscription: ReturnType<UnisockClient["subscribe"]>;
    try {
      subscription = client.subscribe(pattern, options);
    } catch (error) {
      setStatus({ error: error as Error });
      return undefined;
    }
    subscription.ready.then(
      (ready) => live && setStatus({ ready }),
      (error: Error) => live && setStatus({ error }),
    );
    return () => {
      live = false;
      subscription.unsubscribe().catch(() => undefined);
    };
    // The filter is compared by value (filterKey), not by identity.
  }, [client, pattern, filterKey]);
  return status;
}
