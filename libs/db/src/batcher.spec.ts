import { createBatcher } from './batcher';

/** A write function that records its batches and answers when the test says so. */
function gatedWrite(answer: (x: number) => number = (x) => x * 10) {
  const batches: number[][] = [];
  const gates: (() => void)[] = [];
  const write = async (inputs: readonly number[]) => {
    batches.push([...inputs]);
    await new Promise<void>((r) => gates.push(r));
    return inputs.map(answer);
  };
  const openNext = async () => {
    while (gates.length === 0) await new Promise((r) => setImmediate(r));
    gates.shift()!();
  };
  return { write, batches, openNext };
}

describe('createBatcher (group commit)', () => {
  it('writes a lone call at once, and the calls of one tick together', async () => {
    const w = gatedWrite();
    const run = createBatcher(w.write);
    const one = run(1);
    await w.openNext();
    expect(await one).toBe(10);
    const many = Promise.all([run(2), run(3), run(4)]);
    await w.openNext();
    expect(await many).toEqual([20, 30, 40]);
    expect(w.batches).toEqual([[1], [2, 3, 4]]);
  });

  it('holds the calls made while a batch is in flight for the next batch', async () => {
    const w = gatedWrite();
    const run = createBatcher(w.write);
    const first = run(1);
    await new Promise((r) => setImmediate(r));
    const later = [run(2), run(3)];
    await new Promise((r) => setImmediate(r));
    await new Promise((r) => setImmediate(r));
    // Nothing new was written while the first batch is in flight.
    expect(w.batches).toEqual([[1]]);
    await w.openNext();
    await w.openNext();
    expect(await first).toBe(10);
    expect(await Promise.all(later)).toEqual([20, 30]);
    expect(w.batches).toEqual([[1], [2, 3]]);
  });

  it('splits a queue longer than maxBatchSize', async () => {
    const seen: number[][] = [];
    const run = createBatcher(
      async (xs: readonly number[]) => {
        seen.push([...xs]);
        return xs.map((x) => -x);
      },
      { maxBatchSize: 2 },
    );
    expect(await Promise.all([1, 2, 3, 4, 5].map(run))).toEqual([-1, -2, -3, -4, -5]);
    expect(seen).toEqual([[1, 2], [3, 4], [5]]);
  });

  it('retries a failed batch input by input: only the bad input fails', async () => {
    const seen: number[][] = [];
    const run = createBatcher(async (xs: readonly number[]) => {
      seen.push([...xs]);
      if (xs.includes(13)) throw new Error('unlucky');
      return xs.map((x) => x + 1);
    });
    const results = await Promise.allSettled([run(12), run(13), run(14)]);
    expect(results[0]).toEqual({ status: 'fulfilled', value: 13 });
    expect(results[1]).toMatchObject({ status: 'rejected', reason: new Error('unlucky') });
    expect(results[2]).toEqual({ status: 'fulfilled', value: 15 });
    expect(seen).toEqual([[12, 13, 14], [12], [13], [14]]);
  });

  it('refuses an answer of the wrong length instead of misattributing results', async () => {
    const run = createBatcher(async (xs: readonly number[]) => (xs.length > 1 ? [1] : xs.map((x) => x * 2)));
    // The batch of two answered one result: each input is written alone and gets its own answer.
    expect(await Promise.all([run(1), run(2)])).toEqual([2, 4]);
    const lone = createBatcher(async () => [] as number[]);
    await expect(lone(1)).rejects.toThrow('batch write answered 0 results for 1 inputs');
  });
});
