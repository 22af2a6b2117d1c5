/** A markdown table: every cell is escaped for `|` and newlines; columns are padded for plain-text reading. */
export function markdownTable(headers: readonly string[], rows: readonly (readonly string[])[]): string {
  const clean = (s: string) => s.replace(/\|/g, '\\|').replace(/\r?\n/g, ' ');
  const all = [headers, ...rows].map((r) => headers.map((_, i) => clean(r[i] ?? '')));
  const widths = headers.map((_, i) => Math.max(3, ...all.map((r) => r[i].length)));
  const line = (r: string[]) => `| ${r.map((c, i) => c.padEnd(widths[i])).join(' | ')} |`;
  return [
    line(all[0]),
    `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`,
    ...all.slice(1).map(line),
  ].join('\n');
}

/** Milliseconds for a table: 3 significant digits below 10 ms, whole ms from 100 ms; '—' for no value. */
export function fmtMs(ms: number | null | undefined): string {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return '—';
  if (ms < 10) return `${ms.toFixed(2)} ms`;
  if (ms < 100) return `${ms.toFixed(1)} ms`;
  return `${Math.round(ms)} ms`;
}

/** A ratio such as Berth/LXC as `0.42×`; '—' when it could not be computed. */
export function fmtRatio(r: number | null | undefined): string {
  return r === null || r === undefined || !Number.isFinite(r) ? '—' : `${r.toFixed(2)}×`;
}

/** Bytes in KiB below 1 MiB, else MiB with two decimals; '—' for no value. */
export function fmtBytes(bytes: number | null | undefined): string {
  if (bytes === null || bytes === undefined || !Number.isFinite(bytes)) return '—';
  if (Math.abs(bytes) < 1024 * 1024) return `${Math.round(bytes / 1024)} KiB`;
  return `${(bytes / 1024 / 1024).toFixed(2)} MiB`;
}

/** One side-by-side row: label, Berth, LXC, Berth/LXC (for times: below 1× means Berth is faster). */
export function compareRow(
  label: string,
  berth: number | null | undefined,
  lxc: number | null | undefined,
  fmt: (v: number | null | undefined) => string = fmtMs,
): string[] {
  const r = berth === null || berth === undefined || !lxc ? null : berth / lxc;
  return [label, fmt(berth), fmt(lxc), fmtRatio(r)];
}
