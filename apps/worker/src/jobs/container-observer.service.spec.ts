import type { PinoLogger } from 'nestjs-pino';
import type { BerthConfig } from '@berth/config';
import type { HostRuntimeService } from '../runtime/host-runtime.service';
import {
  CONSOLE_LOG_KEEP_BYTES,
  CONSOLE_LOG_MAX_BYTES,
  ContainerObserver,
  nextPassInMs,
  PASS_SPACING,
} from './container-observer.service';
import type { JobStore } from './job-store';

const INTERVAL_MS = 20;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** Until `ok()` holds (the passes run on timers: a loaded machine runs them late, never sooner). */
async function until(ok: () => boolean): Promise<void> {
  for (const t0 = Date.now(); !ok(); await sleep(5))
    if (Date.now() - t0 > 5_000) throw new Error('timed out waiting for the passes');
}

/**
 * The observer's passes in time (what a pass writes is JobStore.observed's, tested against PostgreSQL):
 * periodic, one at a time, a failed one not the last, none after the shutdown.
 */
describe('ContainerObserver', () => {
  /** An observer over a host with one container, running in Postgres and stopped in the kernel. */
  function observer(settled: () => Promise<{ id: string; state: string; version: number }[]>) {
    const observed = jest.fn(async () => true);
    const warn = jest.fn();
    const store = { settledContainers: jest.fn(settled), observed } as unknown as JobStore;
    const trimConsoleLogs = jest.fn(async () => ['c1']);
    const runtime = {
      get: async () => ({
        containers: { list: async () => [{ id: 'c1', status: 'stopped' }], trimConsoleLogs },
      }),
    } as unknown as HostRuntimeService;
    const info = jest.fn();
    const log = { setContext: () => undefined, warn, info } as unknown as PinoLogger;
    const config = { worker: { observeIntervalMs: INTERVAL_MS } } as BerthConfig;
    return {
      o: new ContainerObserver(config, runtime, store, log),
      store,
      observed,
      warn,
      trimConsoleLogs,
      info,
    };
  }
  const ROWS = [{ id: 'c1', state: 'running', version: 3 }];

  it('observes once at start, then every interval, with the row version as the write guard', async () => {
    const { o, store, observed, trimConsoleLogs, info } = observer(async () => ROWS);
    await o.start('h1');
    expect(store.settledContainers).toHaveBeenCalledTimes(1);
    expect(observed).toHaveBeenCalledWith('c1', 'running', 'stopped', {}, { version: 3 });
    // Each pass also bounds the console logs (ContainerRuntime.trimConsoleLogs, tested on the kernel).
    expect(trimConsoleLogs).toHaveBeenCalledWith(CONSOLE_LOG_MAX_BYTES, CONSOLE_LOG_KEEP_BYTES);
    expect(info).toHaveBeenCalledWith({ containers: ['c1'] }, expect.stringMatching(/console logs trimmed/));
    await until(() => (store.settledContainers as jest.Mock).mock.calls.length >= 3);
    await o.beforeApplicationShutdown();
  });

  it('spaces its passes by PASS_SPACING times their duration when that is longer than the interval', async () => {
    expect(nextPassInMs(5_000, 191)).toBe(5_000);
    expect(nextPassInMs(5_000, 1_000)).toBe(1_000 * PASS_SPACING);
    // In time: passes of 10 ms with a 20 ms interval come every ≈ 200 ms, not every 30. On jest's clock
    // (performance.now too), so that a pass which a loaded machine runs late does not space the next more.
    jest.useFakeTimers();
    try {
      const { o, store } = observer(async () => {
        await sleep(10);
        return ROWS;
      });
      const passes = () => (store.settledContainers as jest.Mock).mock.calls.length;
      const started = o.start('h1');
      await jest.advanceTimersByTimeAsync(10);
      await started;
      // Passes at 0, 210 and 420 ms (each takes 10 ms, the next comes 200 ms after its end), then 630.
      await jest.advanceTimersByTimeAsync(615);
      expect(passes()).toBe(3);
      await jest.advanceTimersByTimeAsync(10);
      expect(passes()).toBe(4);
      await jest.advanceTimersByTimeAsync(10);
      await o.beforeApplicationShutdown();
    } finally {
      jest.useRealTimers();
    }
  });

  it('a failed pass is logged and the next one runs', async () => {
    let n = 0;
    const { o, store, warn } = observer(async () => {
      if (++n === 2) throw new Error('PostgreSQL is away');
      return ROWS;
    });
    await o.start('h1');
    await until(() => (store.settledContainers as jest.Mock).mock.calls.length >= 3);
    expect(warn).toHaveBeenCalledWith(
      expect.objectContaining({ err: expect.any(Error) }),
      expect.any(String),
    );
    expect((store.settledContainers as jest.Mock).mock.calls.length).toBeGreaterThanOrEqual(3);
    await o.beforeApplicationShutdown();
  });

  it('at shutdown waits for the pass in flight, then observes no more', async () => {
    let release!: () => void;
    let inFlight = false;
    let n = 0;
    const { o, store } = observer(async () => {
      if (++n === 2) {
        inFlight = true;
        await new Promise<void>((r) => (release = r));
        inFlight = false;
      }
      return ROWS;
    });
    await o.start('h1');
    while (!inFlight) await sleep(5);
    let closed = false;
    const closing = o.beforeApplicationShutdown().then(() => (closed = true));
    await sleep(INTERVAL_MS * 3);
    // Not before the pass ends (the database closes after the shutdown hooks).
    expect(closed).toBe(false);
    release();
    await closing;
    const passes = (store.settledContainers as jest.Mock).mock.calls.length;
    await sleep(INTERVAL_MS * 5);
    expect(store.settledContainers).toHaveBeenCalledTimes(passes);
    expect(passes).toBe(2);
  });
});
