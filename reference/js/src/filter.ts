/**
 * Filter evaluation (spec 5.5.2). The server evaluates filters; the client evaluates them
 * again only to route an event among its own overlapping subscriptions, so that a filtered
 * subscription's listeners never see an event that reached the connection through another,
 * unfiltered subscription. A filter the client cannot evaluate matches (the server decided).
 */
import type { Filter } from "./types.js";

type Scalar = string | number | boolean | null;

function isNumber(value: unknown): value is number {
  return typeof value === "number";
}

/** Same JSON type and value; numbers by value (1, 1.0 and 1e0 are equal). */
function equal(left: unknown, right: unknown): boolean {
  return typeof left === typeof right && left === right;
}

function field(name: unknown, event: string, attrs: Record<string, unknown>): { present: boolean; value?: unknown } {
  if (name === "$event") return { present: true, value: event };
  if (typeof name === "string" && Object.hasOwn(attrs, name)) return { present: true, value: attrs[name] };
  return { present: false };
}

function compare(op: string, value: unknown, operand: unknown): boolean {
  if (!isNumber(value) || !isNumber(operand)) return false;
  switch (op) {
    case "lt":
      return value < operand;
    case "lte":
      return value <= operand;
    case "gt":
      return value > operand;
    default:
      return value >= operand;
  }
}

/** Whether `filter` holds for an event of type `event` with `attrs` (absent attrs: {}). */
export function evaluate(filter: Filter, event: string, attrs: Record<string, unknown> = {}): boolean {
  const entries = Object.entries(filter);
  if (entries.length !== 1) return true;
  const [op, operand] = entries[0] as [string, unknown];
  const args = Array.isArray(operand) ? operand : [];
  switch (op) {
    case "eq":
    case "ne": {
      const f = field(args[0], event, attrs);
      const result = f.present && equal(f.value, args[1]);
      return op === "eq" ? result : !result;
    }
    case "in": {
      const f = field(args[0], event, attrs);
      const options = Array.isArray(args[1]) ? (args[1] as Scalar[]) : [];
      return f.present && options.some((option) => equal(f.value, option));
    }
    case "lt":
    case "lte":
    case "gt":
    case "gte": {
      const f = field(args[0], event, attrs);
      return f.present && compare(op, f.value, args[1]);
    }
    case "exists":
      return field(operand, event, attrs).present;
    case "and":
      return args.every((item) => evaluate(item as Filter, event, attrs));
    case "or":
      return args.some((item) => evaluate(item as Filter, event, attrs));
    case "not":
      return !evaluate(operand as Filter, event, attrs);
    default:
      return true;
  }
}
