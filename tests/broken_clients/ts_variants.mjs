// Deliberately broken variants of the TypeScript client (reference/js). Each replaces one
// piece of source at build time (reference/js/tools/build.mjs --variant NAME); the shipped
// client has no switch for any of this. The client conformance suite must fail each one on
// the requirement named here (tests/test_ts_client.py).
//
// A variant: name, the check keyword that exposes it, the requirement and its grade, and
// [file, search, replace] patches, each of which must match exactly once.
export const VARIANTS = [
  {
    name: "no_jitter",
    keyword: "backoff_delays",
    requirement: "UNI-CLOSE-13",
    grade: "fail",
    patches: [["src/backoff.ts", "return Math.max(low, uniform(random, ceilingMs(params, attempt)));", "return Math.max(low, ceilingMs(params, attempt));"]],
  },
  {
    name: "no_backoff_cap",
    keyword: "backoff_delays",
    requirement: "UNI-CLOSE-13",
    grade: "fail",
    patches: [
      ["src/backoff.ts", "if (attempt >= 52) return params.cap_ms;", "if (attempt >= 52) return Number.MAX_SAFE_INTEGER;"],
      ["src/backoff.ts", "return Math.min(params.cap_ms, params.base_ms * 2 ** attempt);", "return params.base_ms * 2 ** attempt;"],
    ],
  },
  {
    name: "reconnect_on_fatal",
    keyword: "never_class",
    requirement: "UNI-CLOSE-2",
    grade: "fail",
    patches: [["src/closecodes.ts", "if (known) return known.cls;", 'if (known) return known.cls === "never" && code !== 4001 ? "backoff" : known.cls;']],
  },
  {
    name: "supersede_loop",
    keyword: "superseded",
    requirement: "UNI-CLOSE-24",
    grade: "fail",
    patches: [["src/client.ts", 'if (cls === "never") throw new Stop(close);', 'if (cls === "never" && close.code !== 4001) throw new Stop(close);']],
  },
  {
    name: "wrong_resume_offset",
    keyword: "resume_presents",
    requirement: "UNI-DEL-20",
    grade: "fail",
    patches: [["src/client.ts", "from[name] = { epoch: position.epoch, offset: position.offset };", "from[name] = { epoch: position.epoch, offset: position.offset + 1 };"]],
  },
  {
    name: "no_dedup",
    keyword: "duplicate_and_stale",
    requirement: "UNI-DEL-30",
    grade: "fail",
    patches: [["src/client.ts", "if (known && known.epoch === epoch && offset <= known.offset) return;", ""]],
  },
  {
    name: "no_heartbeat_timeout",
    keyword: "silent_server",
    requirement: "UNI-HB-9",
    grade: "fail",
    patches: [["src/client.ts", "if (!heartbeat) return;", "if (heartbeat) return;"]],
  },
  {
    name: "no_floor",
    keyword: "now_class",
    requirement: "UNI-CLOSE-16",
    grade: "fail",
    patches: [["src/backoff.ts", "return Math.max(ABSOLUTE_FLOOR_MS, params.floor_ms);", "return 0 * Math.max(ABSOLUTE_FLOOR_MS, params.floor_ms);"]],
  },
  {
    name: "fixed_seed",
    keyword: "jitter_differs",
    requirement: "UNI-CLOSE-14",
    grade: "fail",
    patches: [
      [
        "src/wire.ts",
        "export function cryptoRandom(): number {",
        "let seed = 42;\nexport function cryptoRandom(): number {\n  seed = (seed * 1103515245 + 12345) % 2147483648;\n  return seed / 2147483648;\n}\nexport function unusedRandom(): number {",
      ],
    ],
  },
  {
    name: "new_message_id_on_retry",
    keyword: "lost_ack",
    requirement: "UNI-PUB-38",
    grade: "fail",
    patches: [["src/client.ts", 'this.send({ type: "publish", id, ...pending.fields });', 'this.send({ type: "publish", id, ...pending.fields, message_id: pending.firstSent === at ? messageId : randomId() });']],
  },
  {
    name: "events_before_subscribed",
    keyword: "only_while_subscribed",
    requirement: "UNI-SUB-15",
    grade: "fail",
    patches: [["src/client.ts", "(sub) => sub.activeGen === this.gen && matches(sub.pattern, channel),", "(sub) => matches(sub.pattern, channel),"]],
  },
  {
    name: "no_pong",
    keyword: "answers_every_ping",
    requirement: "UNI-HB-8",
    grade: "fail",
    patches: [["src/client.ts", "        this.send(pong);\n", ""]],
  },
  {
    name: "logs_refused_token",
    keyword: "writes_no_token",
    requirement: "UNI-SEC-7",
    grade: "fail",
    patches: [
      [
        "src/client.ts",
        'if (typeof this.tokenSource === "string") throw new Stop(close);',
        'if (close.code === 4100 || close.code === 4101) console.error(`unisock: token refused (${close.code}): ${this.lastToken}`);\n    if (typeof this.tokenSource === "string") throw new Stop(close);',
      ],
    ],
  },
  {
    name: "stops_on_a_bad_welcome",
    keyword: "first_message_other",
    requirement: "UNI-LC-21",
    grade: "fail",
    patches: [["src/client.ts", 'this.localClose = closeInfo(1006, "bad_welcome", true);', 'this.localClose = closeInfo(1002, "bad_welcome", true);']],
  },
  {
    name: "welcome_unchecked",
    keyword: "first_message_other",
    requirement: "UNI-LC-21",
    grade: "fail",
    patches: [["src/wire.ts", "return validates(WELCOME_SCHEMA, message) ?", "return true ?"]],
  },
];
