/**
 * The page half of the Chromium adapter: the client runs here on the browser's own
 * WebSocket. Lines from the suite arrive through `window.unisockAdapterFeed`; lines for the
 * suite leave through `window.unisockAdapterEmit`, a binding the Node half (adapter/browser.ts)
 * exposes and writes to its standard output.
 */
import { Adapter } from "./core.js";

declare global {
  interface Window {
    unisockAdapterEmit(line: string): Promise<void>;
    unisockAdapterFeed(line: string): void;
    unisockAdapterShutdown(): Promise<void>;
    unisockAdapterExited: Promise<void>;
  }
}

const adapter = new Adapter({
  // Bindings are delivered in call order, so the suite sees lines in emit order (UNI-ADP-7).
  write: (line) => void window.unisockAdapterEmit(line),
  adapterName: "unisock-js-chromium-adapter", // answers hello only if the Node half did not
});

window.unisockAdapterFeed = (line) => adapter.feed(line);
window.unisockAdapterShutdown = () => adapter.shutdown();
window.unisockAdapterExited = adapter.exited;
