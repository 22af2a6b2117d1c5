import { FALLBACK_AFTER, refusedByPostgres, WrittenBehind } from './written-behind';

/** An error as node-postgres reports one PostgreSQL sent: its SQLSTATE in `code`, and a `severity`. */
const pgError = (message: string, code: string) =>
  Object.assign(new Error(message), { code, severity: 'ERROR' });

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
        // raise_exception, as a trigger or a constraint would refuse it
        throw pgError('refused', 'P0001');
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

  it('never tries the fallback while the write fails for want of PostgreSQL, not by its refusal', async () => {
    const behind = new WrittenBehind(log);
    // The FALLBACK_AFTER-th error, where the fallback would be tried, is Node's EPIPE (five characters,
    // like a SQLSTATE); refusedByPostgres is tested on the other kinds below.
    const errors = [
      Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' }),
      new Error('Connection terminated unexpectedly'),
      pgError('terminating connection due to administrator command', '57P01'),
      pgError('deadlock detected', '40P01'),
      Object.assign(new Error('write EPIPE'), { code: 'EPIPE' }),
    ];
    let writes = 0;
    let fallbacks = 0;
    behind.add(
      'j5',
      async () => {
        if (writes < errors.length) throw errors[writes++];
        writes++;
      },
      async () => void fallbacks++,
    );
    expect(await behind.drain(20_000)).toBe(0);
    // FALLBACK_AFTER failures and more: the fallback would have been tried at the last one.
    expect(errors.length).toBeGreaterThanOrEqual(FALLBACK_AFTER);
    expect({ writes, fallbacks }).toEqual({ writes: errors.length + 1, fallbacks: 0 });
  }, 30_000);

  it('tells PostgreSQL refusing a write from PostgreSQL being away', () => {
    expect(refusedByPostgres(pgError('violates check constraint', '23514'))).toBe(true);
    // A SQLSTATE-like code without a severity is not PostgreSQL's.
    expect(refusedByPostgres({ driverError: { code: '22P02' } })).toBe(false);
    expect(refusedByPostgres(pgError('admin shutdown', '57P01'))).toBe(false);
    expect(refusedByPostgres(pgError('connection failure', '08006'))).toBe(false);
    expect(refusedByPostgres(pgError('out of memory', '53200'))).toBe(false);
    expect(refusedByPostgres({ driverError: { code: '22P02', severity: 'ERROR' } })).toBe(true);
    expect(refusedByPostgres(Object.assign(new Error('timeout'), { code: 'ETIMEDOUT' }))).toBe(false);
    expect(refusedByPostgres(Object.assign(new Error('write EPIPE'), { code: 'EPIPE' }))).toBe(false);
    expect(refusedByPostgres(new Error('no code'))).toBe(false);
    expect(refusedByPostgres(null)).toBe(false);
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
