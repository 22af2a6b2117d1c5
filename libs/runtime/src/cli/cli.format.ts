import { RuntimeError } from '../common/errors';

/**
 * Pure text formatting for the operator CLI: tables, byte sizes and the one-line error format. Kept apart
 * from the commands so it is unit-testable without a kernel.
 */

const UNITS = ['', 'K', 'M', 'G', 'T', 'P', 'E'];

/**
 * Formats bytes with binary units the way `parseSize` reads them back: `268435456` → `256M`,
 * `1536` → `1.5K`. Whole values print without decimals, others with one; `null` prints `-`.
 */
export function formatBytes(bytes: number | null | undefined): string {
  if (bytes === null || bytes === undefined || !Number.isFinite(bytes)) return '-';
  let value = bytes;
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit++;
  }
  const text = Number.isInteger(value) ? String(value) : value.toFixed(1);
  return `${text}${UNITS[unit]}`;
}

/**
 * Left-aligned columns separated by two spaces, padded to the widest cell of each column; the first row
 * is the header. Trailing spaces are trimmed so the output diffs cleanly.
 */
export function formatTable(rows: readonly (readonly string[])[]): string {
  if (rows.length === 0) return '';
  const widths: number[] = [];
  for (const row of rows) row.forEach((cell, i) => (widths[i] = Math.max(widths[i] ?? 0, cell.length)));
  return (
    rows
      .map((row) =>
        row
          .map((cell, i) => cell.padEnd(widths[i]))
          .join('  ')
          .trimEnd(),
      )
      .join('\n') + '\n'
  );
}

/** A usage mistake (unknown command or option, missing argument): exit code 2. */
export class CliUsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}

/** Exit codes of the CLI. `exec` passes the command's own code through instead. */
export const EXIT_OK = 0;
export const EXIT_ERROR = 1;
export const EXIT_USAGE = 2;

/**
 * The one line the CLI prints on stderr for a failure, and its exit code: `error: <CODE>: <message>`.
 * RuntimeErrors keep their stable code (exit 1), usage errors say `USAGE` (exit 2), anything else is
 * `INTERNAL` (exit 1). Never a stack trace: the message is flattened to one line.
 */
export function describeFailure(error: unknown): { line: string; exitCode: number } {
  const oneLine = (s: string): string => s.replace(/\s*\n\s*/g, ' ').trim();
  if (error instanceof RuntimeError) {
    return { line: `error: ${error.code}: ${oneLine(error.message)}`, exitCode: EXIT_ERROR };
  }
  if (error instanceof CliUsageError) {
    return { line: `error: USAGE: ${oneLine(error.message)}`, exitCode: EXIT_USAGE };
  }
  const message = error instanceof Error ? error.message : String(error);
  return { line: `error: INTERNAL: ${oneLine(message)}`, exitCode: EXIT_ERROR };
}
