/** The value of the series `name{labels}` in a Prometheus text exposition (undefined: not there). */
export function sample(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  const want = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const have = new Set((m[2] ?? '').split(/,(?=[a-zA-Z_]+=")/).filter(Boolean));
    if (want.every((l) => have.has(l))) return Number(m[3]);
  }
  return undefined;
}
