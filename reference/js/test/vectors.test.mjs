// The client's building blocks against the language-neutral vectors in conformance/vectors.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { backoffBounds, closeClass, evaluateFilter, matches, parseChannel, parsePattern } from "../dist/index.js";

const vectors = (name) =>
  JSON.parse(readFileSync(new URL(`../../../conformance/vectors/${name}.json`, import.meta.url), "utf8")).cases;

const valid = (fn) => {
  try {
    fn();
    return true;
  } catch {
    return false;
  }
};

test("close codes are classed as the vectors say", () => {
  for (const { description, input, expected } of vectors("close-codes")) {
    assert.equal(closeClass(input.code), expected.action, description);
  }
});

test("backoff delays lie within the bounds of the vectors", () => {
  for (const { description, input, expected } of vectors("backoff")) {
    const params = { reset_after_ms: 10000, ...input.params };
    const [low, high] = backoffBounds(params, input.attempt, input.retry_after_ms ?? 0);
    assert.deepEqual([low, high], [expected.min_ms, expected.max_ms], description);
  }
});

test("patterns match channels as the vectors say", () => {
  for (const { description, input, expected } of vectors("matching")) {
    assert.equal(matches(parsePattern(input.pattern), input.channel), expected.matches, description);
  }
});

test("pattern and channel grammar agrees with the vectors", () => {
  for (const { description, input, expected } of vectors("patterns")) {
    assert.equal(valid(() => parsePattern(input.pattern)), expected.valid, description);
  }
  for (const { description, input, expected } of vectors("channel-names")) {
    assert.equal(valid(() => parseChannel(input.name)), expected.valid, description);
  }
});

test("filters evaluate as the vectors say", () => {
  for (const { description, input, expected } of vectors("filters")) {
    if (!expected.valid) continue;
    assert.equal(evaluateFilter(input.filter, input.event.event, input.event.attrs), expected.result, description);
  }
});
