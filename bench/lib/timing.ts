/** Monotonic milliseconds (fractional), unaffected by wall-clock changes. */
export function nowMs(): number {
  return Number(process.hrtime.bigint()) / 1e6;
}

/** Runs `fn` once and returns its result with the elapsed milliseconds. Rejections propagate. */
export async function timed<T>(fn: () => Promise<T>): Promise<{ ms: number; value: T }> {
  const t0 = nowMs();
  const value = await fn();
  return { ms: nowMs() - t0, value };
}

/** A named set of timing series that a benchmark fills sample by sample. */
export class Samples {
  private readonly series = new Map<string, number[]>();

  /** Appends one sample to the series `name` (created on first use). */
  add(name: string, value: number): void {
    const list = this.series.get(name) ?? [];
    list.push(value);
    this.series.set(name, list);
  }

  /** The samples of `name` (empty when none were added). */
  get(name: string): number[] {
    return this.series.get(name) ?? [];
  }

  /** Every series by name, in insertion order. */
  all(): Record<string, number[]> {
    return Object.fromEntries(this.series);
  }
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
