import { spawn, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { startApiOnly, type ApiOnly } from '@test/support/api-only';
import { createTestKey } from '@test/support/pipeline';
import { until } from '@test/support/worker-process';

const MiB = 1024 * 1024;

describe("npm run up's main job (scripts/main-job.js)", () => {
  let a: ApiOnly;
  let base: string;
  let keyFile: string;
  let child: ChildProcess | undefined;

  beforeAll(async () => {
    a = await startApiOnly('mainjob');
    await a.api.listen(0, '127.0.0.1');
    base = `http://127.0.0.1:${(a.api.getHttpServer().address() as AddressInfo).port}`;
    keyFile = join(a.dir, 'main.key');
    writeFileSync(keyFile, a.token, { mode: 0o600 });
    // The busybox template, ready on the host (its worker would have imported it).
    const [{ id }] = await a.ds.query(
      `INSERT INTO templates (name, source) VALUES ('busybox', 'builtin:busybox') RETURNING id`,
    );
    await a.ds.query(
      `INSERT INTO template_replicas (template_id, host_id, state, storage_driver) VALUES ($1, $2, 'ready', 'dir')`,
      [id, a.hostId],
    );
  }, 60_000);
  afterEach(() => {
    child?.kill('SIGKILL');
    child = undefined;
  });
  afterAll(() => a?.close(), 30_000);

  /** A stopped container `hello` made with `token`, as if its create had run. */
  async function stoppedHello(token: string): Promise<string> {
    const res = await a
      .http()
      .post('/v1/containers')
      .set(a.auth(token))
      .send({ name: 'hello', template: 'busybox', cpus: 1, memoryBytes: 64 * MiB, start: false });
    expect(res.status).toBe(202);
    const id = res.body.container.id as string;
    await a.ds.query(`UPDATE jobs SET state = 'completed', finished_at = now() WHERE container_id = $1`, [
      id,
    ]);
    await a.ds.query(`UPDATE containers SET state = 'stopped', target_state = 'stopped' WHERE id = $1`, [id]);
    return id;
  }

  const jobsOf = async (id: string) =>
    (
      (await a.ds.query(`SELECT kind FROM jobs WHERE container_id = $1 ORDER BY container_seq`, [id])) as {
        kind: string;
      }[]
    ).map((j) => j.kind);

  it("starts its own stopped `hello`, never a tenant's of the same name listed before it", async () => {
    const own = await stoppedHello(a.token);
    const [{ id: tenant }] = await a.ds.query(`INSERT INTO tenants (name) VALUES ('t-unpaid') RETURNING id`);
    // Newer, so first in the admin key's list (newest first).
    const theirs = await stoppedHello(await createTestKey(a.ds, [], tenant));
    const hostName = (await a.ds.query(`SELECT name FROM hosts WHERE id = $1`, [a.hostId]))[0].name;
    child = spawn(process.execPath, ['scripts/main-job.js', base, keyFile, 'hello', hostName], {
      cwd: join(__dirname, '../..'),
      stdio: 'ignore',
    });
    // No worker runs here: the start job it asks for stays queued, and the script waits on it.
    await until('the main job to start its container', async () =>
      (await jobsOf(own)).includes('container.start'),
    );
    expect(await jobsOf(own)).toEqual(['container.create', 'container.start']);
    expect(await jobsOf(theirs)).toEqual(['container.create']);
    expect((await a.ds.query(`SELECT state FROM containers WHERE id = $1`, [theirs]))[0].state).toBe(
      'stopped',
    );
  }, 60_000);
});
