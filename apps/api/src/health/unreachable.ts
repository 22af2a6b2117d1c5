/** What /readyz says of a service it cannot use: its name and the error's code (ECONNREFUSED, a SQLSTATE). */
export function unreachable(service: string, e: unknown): string {
  const code = (e as { code?: unknown } | null)?.code;
  return typeof code === 'string' && /^[A-Z0-9_]{1,32}$/.test(code)
    ? `${service} unreachable (${code})`
    : `${service} unreachable`;
}
