// Parses an AsyncAPI document with the official parser, resolving relative $refs from disk.
// Prints every diagnostic; exits 1 when any has error severity (or parsing fails), else 0.
// Usage: node tests/asyncapi/parse.mjs schemas/v1/asyncapi.yaml
import { readFile } from "node:fs/promises";
import { resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { Parser, fromFile, DiagnosticSeverity } from "@asyncapi/parser";

const target = process.argv[2];
if (!target) {
  console.error("usage: node parse.mjs <asyncapi document>");
  process.exit(2);
}

const path = resolve(target);
await readFile(path); // a missing file is reported as such, not as a parser diagnostic
const parser = new Parser();
const { document, diagnostics } = await fromFile(parser, path).parse({
  source: pathToFileURL(path).href,
});

const names = { 0: "error", 1: "warning", 2: "information", 3: "hint" };
let errors = 0;
for (const diagnostic of diagnostics) {
  const severity = names[diagnostic.severity] ?? String(diagnostic.severity);
  if (diagnostic.severity === DiagnosticSeverity.Error) errors += 1;
  const where = (diagnostic.path ?? []).join("/");
  console.log(`${severity}: ${diagnostic.code}: ${diagnostic.message} at /${where}`);
}
if (document === undefined || errors > 0) {
  console.log(`FAILED: ${errors} error diagnostic(s)`);
  process.exit(1);
}
const messages = document.allMessages().length;
const operations = document.operations().length;
console.log(`OK: ${operations} operations, ${messages} messages, ${diagnostics.length} diagnostic(s)`);
