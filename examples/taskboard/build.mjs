// Bundles web/main.tsx (React and the Unisock client) into web/dist/app.js for the backend
// to serve. The client comes from reference/js through the @unisock/client link.
import { build } from "esbuild";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
await build({
  entryPoints: [path.join(here, "web", "main.tsx")],
  outfile: path.join(here, "web", "dist", "app.js"),
  bundle: true,
  format: "iife",
  platform: "browser",
  target: "es2022",
  sourcemap: true,
  minify: true,
  jsx: "automatic",
  define: { "process.env.NODE_ENV": '"production"' },
  // The linked client resolves react from this example's own packages.
  nodePaths: [path.join(here, "node_modules")],
  logLevel: "warning",
});
