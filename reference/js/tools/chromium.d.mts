import type { Browser, LaunchOptions } from "playwright-core";
export const CHROMIUM: string;
export const CHROMIUM_ARGS: string[];
export function launchChromium(options?: LaunchOptions): Promise<Browser>;
