import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConfigError, loadConfig } from './config';
import { runtimeEnv } from './runtime-env';

/** A state dir without the local cluster's password file (the checkout's own .berth may have one). */
const NO_STATE = { BERTH_STATE_DIR: '/nonexistent/berth-state' };

describe('loadConfig', () => {
  it('gives local-mode defaults for an empty environment', () => {
    const c = loadConfig({ ...NO_STATE });
    expect(c.database.url).toBe('postgres://berth:berth@127.0.0.1:5433/berth');
    expect(c.redis.url).toBe('redis://127.0.0.1:6380');
    expect(c.api.port).toBe(8080);
    expect(c.runtime.network.mode).toBe('none');
    expect(c.runtime.network.allowIpForward).toBe(false);
  });

  it('points the default URLs at the project-local service ports', () => {
    const c = loadConfig({ ...NO_STATE, BERTH_PG_PORT: '5441', BERTH_REDIS_PORT: '6391' });
    expect(c.database.url).toBe('postgres://berth:berth@127.0.0.1:5441/berth');
    expect(c.redis.url).toBe('redis://127.0.0.1:6391');
    expect(loadConfig({ BERTH_PG_PORT: '5441', DATABASE_URL: 'postgres://x@db/y' }).database.url).toBe(
      'postgres://x@db/y',
    );
  });

  it("uses the local cluster's app password that services.sh wrote in the state dir", () => {
    const dir = mkdtempSync(join(tmpdir(), 'berth-state-'));
    try {
      writeFileSync(join(dir, 'pg-password'), '0a1b2c3d4e5f\n', { mode: 0o600 });
      expect(loadConfig({ BERTH_STATE_DIR: dir, BERTH_PG_PORT: '5441' }).database.url).toBe(
        'postgres://berth:0a1b2c3d4e5f@127.0.0.1:5441/berth',
      );
      expect(loadConfig({ BERTH_STATE_DIR: dir, DATABASE_URL: 'postgres://x@db/y' }).database.url).toBe(
        'postgres://x@db/y',
      );
      expect(() => loadConfig({ BERTH_STATE_DIR: 'relative' })).toThrow(/BERTH_STATE_DIR/);
      // A password file that is there but cannot be read is said plainly (not a failed login later).
      rmSync(join(dir, 'pg-password'));
      mkdirSync(join(dir, 'pg-password'));
      expect(() => loadConfig({ BERTH_STATE_DIR: dir })).toThrow(
        /DATABASE_URL: unset, and .*pg-password cannot be read/,
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('maps variables into the nested object with types', () => {
    const c = loadConfig({ API_PORT: '9000', WORKER_CONCURRENCY: '8', BERTH_ALLOW_IP_FORWARD: 'true' });
    expect(c.api.port).toBe(9000);
    expect(c.worker.concurrency).toBe(8);
    expect(c.worker.prefetch).toBe(8); // follows the concurrency unless set
    expect(loadConfig({ WORKER_CONCURRENCY: '8', WORKER_PREFETCH: '0' }).worker.prefetch).toBe(0);
    // The host's containers are compared with the kernel at the heartbeat's pace unless set.
    expect(loadConfig({ HEARTBEAT_INTERVAL_MS: '2000' }).worker.observeIntervalMs).toBe(2000);
    expect(
      loadConfig({ HEARTBEAT_INTERVAL_MS: '2000', WORKER_OBSERVE_INTERVAL_MS: '500' }).worker
        .observeIntervalMs,
    ).toBe(500);
    expect(c.runtime.network.allowIpForward).toBe(true);
  });

  it('names every bad variable', () => {
    let err: unknown;
    try {
      loadConfig({ API_PORT: 'http', REDIS_URL: 'localhost:6379', BERTH_DATA_ROOT: 'relative/dir' });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    const vars = (err as ConfigError).problems.map((p) => p.variable).sort();
    expect(vars).toEqual(['API_PORT', 'BERTH_DATA_ROOT', 'REDIS_URL']);
    expect((err as Error).message).toContain('REDIS_URL: must be a URL with protocol redis: or rediss:');
  });

  it('refuses a heartbeat that a live host would look offline between', () => {
    expect(() => loadConfig({ HEARTBEAT_INTERVAL_MS: '20000', HOST_OFFLINE_AFTER_MS: '30000' })).toThrow(
      /HEARTBEAT_INTERVAL_MS: must be at most half of HOST_OFFLINE_AFTER_MS \(30000 ms\)/,
    );
    expect(loadConfig({ HEARTBEAT_INTERVAL_MS: '15000', HOST_OFFLINE_AFTER_MS: '30000' }).host).toMatchObject(
      {
        heartbeatIntervalMs: 15000,
        offlineAfterMs: 30000,
      },
    );
  });

  it('refuses a cgroup parent that Berth would not recognise as its own', () => {
    expect(() => loadConfig({ BERTH_CGROUP_PARENT: 'system.slice' })).toThrow(/BERTH_CGROUP_PARENT/);
  });
});

describe('runtimeEnv (the runtime CLI flags’ defaults)', () => {
  it('gives the runtime settings that are set, checked as the worker checks them, and nothing else', () => {
    expect(runtimeEnv({})).toEqual({});
    expect(
      runtimeEnv({
        BERTH_DATA_ROOT: '/srv/berth',
        BERTH_STORAGE_DRIVER: 'overlay',
        BERTH_HOST_NETNS: 'berth-h1',
        BERTH_BRIDGE: '',
        DATABASE_URL: 'not read here',
      }),
    ).toEqual({
      BERTH_DATA_ROOT: '/srv/berth',
      BERTH_STORAGE_DRIVER: 'overlay',
      BERTH_HOST_NETNS: 'berth-h1',
    });
    // Unset, the bridge's address pool stays unset (given, it turns the CLI's bridge networking on).
    expect(runtimeEnv({ BERTH_BRIDGE: 'berth1' })).toEqual({ BERTH_BRIDGE: 'berth1' });
    expect(() => runtimeEnv({ BERTH_DATA_ROOT: 'relative', BERTH_CGROUP_PARENT: 'system.slice' })).toThrow(
      ConfigError,
    );
    expect(() => runtimeEnv({ BERTH_STORAGE_DRIVER: 'zfs' })).toThrow(/BERTH_STORAGE_DRIVER/);
  });
});
