// Launches Debian's Chromium (/usr/bin/chromium, never a downloaded build) through
// playwright-core, with the flags this machine needs: no sandbox as root, and no background
// networking, which a closed network would refuse.
import { chromium } from "playwright-core";

export const CHROMIUM = process.env.UNISOCK_CHROMIUM || "/usr/bin/chromium";

export const CHROMIUM_ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

/** A headless Chromium; each call starts its own browser with an empty profile. */
export function launchChromium(options = {}) {
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS, ...options });
}
