// Builds dist/: the client as ESM (browser and Node), the React entry, and the test adapters.
// `--variant NAME --out DIR` builds the Node adapter from a deliberately broken client
// (tests/broken_clients/ts_variants.mjs) for the conformance suite's sensitivity tests.
import { build } from "esbuild";
import { readFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const args = process.argv.slice(2);
const option = (name) => {
  const index = args.indexOf(name);
  return index >= 0 ? args[index + 1] : undefined;
};

const common = { bundle: true, sourcemap: true, logLevel: "warning", target: "es2022", absWorkingDir: root };

/** An esbuild plugin that applies a variant's source replacements; each must match once. */
function patches(variant) {
  return {
    name: "variant",
    setup(b) {
      b.onLoad({ filter: /\/src\/.*\.ts$/ }, async (args) => {
        const file = path.relative(root, args.path);
        let text = await readFile(args.path, "utf8");
        for (const [target, search, replace] of variant.patches) {
          if (target !== file) continue;
          const count = text.split(search).length - 1;
          if (count !== 1) throw new Error(`variant ${variant.name}: ${JSON.stringify(search)} occurs ${count} times in ${file}`);
          text = text.replace(search, () => replace);
        }
        return { contents: text, loader: "ts" };
      });
    },
  };
}

const variantName = option("--variant");
if (variantName) {
  const { VARIANTS } = await import(path.join(root, "..", "..", "tests", "broken_clients", "ts_variants.mjs"));
  const variant = VARIANTS.find((v) => v.name === variantName);
  if (!variant) throw new Error(`no variant ${variantName}`);
  const out = option("--out") ?? path.join(root, "dist", "variants", variantName);
  await build({
    ...common,
    entryPoints: ["adapter/node.ts"],
    outfile: path.join(out, "adapter-node.js"),
    platform: "node",
    format: "esm",
    packages: "external",
    plugins: [patches(variant)],
    sourcemap: false,
  });
  console.log(path.join(out, "adapter-node.js"));
} else {
  await Promise.all([
    build({ ...common, entryPoints: ["src/index.ts"], outfile: "dist/index.js", format: "esm", platform: "neutral" }),
    build({
      ...common,
      entryPoints: ["src/react.ts"],
      outfile: "dist/react.js",
      format: "esm",
      platform: "neutral",
      external: ["react", "./client.js"],
    }),
    build({ ...common, entryPoints: ["adapter/node.ts"], outfile: "dist/adapter-node.js", platform: "node", format: "esm", packages: "external" }),
    build({ ...common, entryPoints: ["adapter/browser.ts"], outfile: "dist/adapter-browser.js", platform: "node", format: "esm", packages: "external" }),
    build({ ...common, entryPoints: ["adapter/page.ts"], outfile: "dist/adapter-page.js", platform: "browser", format: "iife" }),
  ]);
}
