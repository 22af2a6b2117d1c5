import { WrittenBehind } from './written-behind';

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
