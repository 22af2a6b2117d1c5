import type { ValidationError } from 'class-validator';

/** Constraints that check what a value is: when one fails, the value's range or length is beside the point. */
const TYPE_CHECKS = new Set([
  'isNumber',
  'isInt',
  'isString',
  'isBoolean',
  'isObject',
  'isArray',
  'isUUID',
  'isEnum',
  'isIn',
  'isISO8601',
  'isDateString',
]);

/**
 * class-validator's errors as the problem's `errors`, one clear message per mistake: a field left out is
 * `<field> is required` (not its range and type rules, all of which an absent value fails), a value of
 * the wrong type says only that (`cpus must be a number …`, not also that "two" is below 0.01), and
 * anything else lists every rule it breaks. Nested fields are named by their path (`resources.cpus`), as
 * Nest's own messages do; an unknown field keeps class-validator's `property <name> should not exist`.
 */
export function validationMessages(errors: readonly ValidationError[], parent = ''): string[] {
  // Once each: the elements of an array share their messages (`each value in items must be …`).
  return [...new Set(collect(errors, parent))];
}

function collect(errors: readonly ValidationError[], parent: string): string[] {
  const out: string[] = [];
  for (const e of errors) {
    const path = parent ? `${parent}.${e.property}` : e.property;
    const constraints = e.constraints ?? {};
    const keys = Object.keys(constraints);
    const prefixed = (message: string) => (parent ? `${parent}.${message}` : message);
    if (keys.includes('whitelistValidation')) out.push(prefixed(constraints.whitelistValidation));
    // No property: the value itself is refused (forbidUnknownValues: not an object of a known shape).
    else if (e.property === undefined) out.push(...keys.map((k) => constraints[k]));
    else if (keys.length > 0 && e.value === undefined) out.push(`${path} is required`);
    else if (keys.length > 0) {
      const types = keys.filter((k) => TYPE_CHECKS.has(k));
      for (const k of types.length > 0 ? types : keys) out.push(prefixed(constraints[k]));
    }
    if (e.children && e.children.length > 0) out.push(...collect(e.children, path));
  }
  return out;
}
