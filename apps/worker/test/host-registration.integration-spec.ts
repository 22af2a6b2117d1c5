import type { INestApplicationContext } from '@nestjs/common';
import { rmSync } from 'node:fs';
import type { DataSource } from 'typeorm';
import { createDataSource } from '@berth/db';
import { testConfig } from '@test/support/config';
import { createWorker } from '../src/bootstrap';
import { HostRegistrationService } from '../src/host/host-registration.service';

describe('worker host registration and heartbeat', () => {
  const name = `test-host-${process.pid}`;
  const env = {
    BERTH_HOST_NAME: name,
    BERTH_DATA_ROOT: `/tmp/berth-hosttest-${process.pid}`,
    BERTH_STORAGE_DRIVER: 'dir',
    BERTH_CGROUP_PARENT: `berth-hosttest-${process.pid}`,
    BULLMQ_PREFIX: `hosttest-${process.pid}`,
  };
  let ds: DataSource;
  let worker: INestApplicationContext | undefined;

  beforeAll(async () => {
    ds = createDataSource(process.env.BERTH_TEST_DATABASE_URL!);
    await ds.initialize();
  });
  afterAll(async () => {
    await worker?.close();
    await ds.destroy();
    rmSync(env.BERTH_DATA_ROOT, { recursive: true, force: true });
  });

  const host = async () => (await ds.query(`SELECT * FROM hosts WHERE name = $1`, [name]))[0];

  it('registers its host with detected capabilities', async () => {
    worker = await createWorker(testConfig({ ...env, HEARTBEAT_INTERVAL_MS: '200' }));
    await worker.init();
    const row = await host();
    expect(row).toMatchObject({ name, state: 'online', draining: false });
    expect(row.cpu_count).toBeGreaterThan(0);
    expect(Number(row.memory_bytes)).toBeGreaterThan(0);
    expect([1, 2]).toContain(row.cgroup_version);
    expect(row.storage_drivers).toContain('dir');
    expect(row.capabilities.kernelVersion).toMatch(/^\d+\./);
    expect(worker.get(HostRegistrationService).hostId).toBe(row.id);
  });

  it('heartbeats: last_heartbeat_at moves forward', async () => {
    // Every 200 ms; looked at until it moves (a loaded machine runs the beat late), for a few seconds.
    const before = (await host()).last_heartbeat_at as Date;
    let after = before;
    for (const t0 = Date.now(); after.getTime() <= before.getTime() && Date.now() - t0 < 5_000;) {
      await new Promise((r) => setTimeout(r, 50));
      after = (await host()).last_heartbeat_at as Date;
    }
    expect(after.getTime()).toBeGreaterThan(before.getTime());
  });

  it('keeps the same host id on restart and marks the host offline on shutdown', async () => {
    const id = (await host()).id;
    await worker!.close();
    worker = undefined;
    expect((await host()).state).toBe('offline');
    worker = await createWorker(testConfig(env));
    await worker.init();
    expect((await host()).id).toBe(id);
    expect((await host()).state).toBe('online');
    const actions = await ds.query(`SELECT action FROM audit_events WHERE subject_id = $1 ORDER BY id`, [id]);
    expect(actions.map((a: { action: string }) => a.action)).toEqual([
      'host.registered',
      'host.stopped',
      'host.registered',
    ]);
  });
});
