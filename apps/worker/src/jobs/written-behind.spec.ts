import { FALLBACK_AFTER, WrittenBehind } from './written-behind';

describe('WrittenBehind', () => {
  const warnings: object[] = [];
  const log = { warn: (obj: object) => void warnings.push(obj) };
  beforeEach(() => (warnings.length = 0));

  it('retries a failed write until it succeeds, and drain waits for it', async () => {
    const behind = new WrittenBehind(log);
    let calls = 0;
    behind.add('j1', async () => {
      calls++;
      if (calls < 3) throw new Error(`refused ${calls}`);
    });
    expect(behind.size).toBe(1);
    expect(await behind.drain(5_000)).toBe(0);
    expect(calls).toBe(3);
    expect(behind.size).toBe(0);
    expect(warnings).toEqual([
      expect.objectContaining({ jobId: 'j1', retryMs: 100 }),
      expect.objectContaining({ jobId: 'j1', retryMs: 200 }),
    ]);
  });

  it('after FALLBACK_AFTER failures tries the fallback too, and stops once it is written', async () => {
    const behind = new WrittenBehind(log);
    let writes = 0;
    const fallbacks: string[] = [];
    behind.add(
      'j2',
      async () => {
        writes++;
        throw new Error('refused');
      },
      async (err) => {
        fallbacks.push((err as Error).message);
        if (fallbacks.length < 2) throw new Error('away');
      },
    );
    expect(await behind.drain(10_000)).toBe(0);
    // Fallback tried at the 5th failure (failed), then again at the 6th (written).
    expect(writes).toBe(FALLBACK_AFTER + 1);
    expect(fallbacks).toEqual(['refused', 'refused']);
  });

  it('drain waits for every write, also two of one job', async () => {
    const behind = new WrittenBehind(log);
    const done: string[] = [];
    let releaseFirst!: () => void;
    behind.add('j3', () => new Promise<void>((r) => (releaseFirst = r)).then(() => void done.push('first')));
    behind.add('j3', async () => void done.push('second'));
    const draining = behind.drain(5_000);
    await new Promise((r) => setTimeout(r, 20));
    expect(done).toEqual(['second']);
    releaseFirst();
    expect(await draining).toBe(0);
    expect(done).toEqual(['second', 'first']);
  });

  it('drain gives up at its timeout and answers how many writes are left', async () => {
    const behind = new WrittenBehind(log);
    let release!: () => void;
    behind.add('slow', () => new Promise<void>((r) => (release = r)));
    behind.add('fast', async () => undefined);
    const t0 = Date.now();
    expect(await behind.drain(50)).toBe(1);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(45);
    release();
    expect(await behind.drain(1_000)).toBe(0);
  });
});
