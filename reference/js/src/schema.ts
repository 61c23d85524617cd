/**
 * JSON Schema validation for the keywords the message schemas use. The schemas come from
 * schemas/v1 through tools/gen-types.mjs, with references resolved and annotations dropped;
 * generation fails on any other keyword, so a schema change cannot be silently ignored here.
 */

export interface Schema {
  readonly type?: "object" | "array" | "string" | "integer" | "number" | "boolean" | "null";
  readonly const?: unknown;
  readonly enum?: readonly unknown[];
  readonly required?: readonly string[];
  readonly properties?: Readonly<Record<string, Schema>>;
  readonly items?: Schema;
  readonly uniqueItems?: boolean;
  readonly pattern?: string;
  readonly minLength?: number;
  readonly maxLength?: number;
  readonly minimum?: number;
  readonly maximum?: number;
  readonly exclusiveMinimum?: number;
}

const patterns = new Map<string, RegExp>();

function pattern(source: string): RegExp {
  let compiled = patterns.get(source);
  if (!compiled) {
    compiled = new RegExp(source, "u");
    patterns.set(source, compiled);
  }
  return compiled;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function hasType(value: unknown, type: NonNullable<Schema["type"]>): boolean {
  switch (type) {
    case "object":
      return isObject(value);
    case "array":
      return Array.isArray(value);
    case "integer":
      return Number.isInteger(value);
    case "number":
      return typeof value === "number" && Number.isFinite(value);
    case "null":
      return value === null;
    default:
      return typeof value === type;
  }
}

/** JSON equality: numbers by value, objects regardless of member order. */
function equal(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (Array.isArray(a) && Array.isArray(b)) return a.length === b.length && a.every((item, i) => equal(item, b[i]));
  if (isObject(a) && isObject(b)) {
    const keys = Object.keys(a);
    return keys.length === Object.keys(b).length && keys.every((key) => Object.hasOwn(b, key) && equal(a[key], b[key]));
  }
  return false;
}

/** Whether `value` is valid against `schema`. */
export function validates(schema: Schema, value: unknown): boolean {
  if (schema.type !== undefined && !hasType(value, schema.type)) return false;
  if ("const" in schema && !equal(value, schema.const)) return false;
  if (schema.enum !== undefined && !schema.enum.some((option) => equal(value, option))) return false;
  if (typeof value === "string") {
    const length = [...value].length; // in code points, as JSON Schema counts
    if (schema.minLength !== undefined && length < schema.minLength) return false;
    if (schema.maxLength !== undefined && length > schema.maxLength) return false;
    if (schema.pattern !== undefined && !pattern(schema.pattern).test(value)) return false;
  }
  if (typeof value === "number") {
    if (schema.minimum !== undefined && value < schema.minimum) return false;
    if (schema.maximum !== undefined && value > schema.maximum) return false;
    if (schema.exclusiveMinimum !== undefined && value <= schema.exclusiveMinimum) return false;
  }
  if (Array.isArray(value)) {
    const { items } = schema;
    if (items !== undefined && !value.every((item) => validates(items, item))) return false;
    if (schema.uniqueItems && value.some((item, i) => value.findIndex((other) => equal(item, other)) !== i)) {
      return false;
    }
  }
  if (isObject(value)) {
    if (schema.required?.some((key) => !Object.hasOwn(value, key))) return false;
    for (const [key, inner] of Object.entries(schema.properties ?? {})) {
      if (Object.hasOwn(value, key) && !validates(inner, value[key])) return false;
    }
  }
  return true;
}
