import { Client } from 'pg';
import type { DataSource } from 'typeorm';
import { createDataSource } from '@berth/db';
import { createEmptyDatabase, dropDatabase } from '@test/support/databases';

/**
 * hosts.reserved_* (migration HostReservations): what a host's live containers reserve, kept by a trigger
 * on `containers`, equal at every step to the sum that placement used to compute at each create; since
 * ResizeHolds each container counts at the larger of its limits and what its pending resizes hold.
 */
describe('host reservation counters', () => {
  const dbName = `berth_reservations_${process.pid}`;
  let ds: DataSource;
  let h1: string;
  let h2: string;
  let tpl: string;
  let n = 0;

  beforeAll(async () => {
    ds = createDataSource(await createEmptyDatabase(dbName));
    await ds.initialize();
    await ds.runMigrations({ transaction: 'each' });
    const host = async (name: string) =>
      (
        await ds.query(
          `INSERT INTO hosts (name, cpu_count, memory_bytes, disk_bytes, kernel_version, cgroup_version,
                              storage_drivers, last_heartbeat_at)
           VALUES ($1, 4, 8589934592, 107374182400, '6', 1, '{dir}', now()) RETURNING id`,
          [name],
        )
      )[0].id as string;
    h1 = await host('r1');
    h2 = await host('r2');
    [{ id: tpl }] = await ds.query(
      `INSERT INTO templates (name, source) VALUES ('t', 'builtin:busybox') RETURNING id`,
    );
  });

  afterAll(async () => {
    await ds?.destroy();
    await dropDatabase(dbName);
  });

  const create = async (hostId: string | null, cpus: number, mem: number, disk: number): Promise<string> =>
    (
      await ds.query(
        `INSERT INTO containers (id, name, host_id, template_id, state, target_state, cpus, memory_bytes,
                                 disk_bytes, pids_max, network_mode)
         VALUES (gen_random_uuid(), $1, $2, $3, 'creating', 'running', $4, $5, $6, 64, 'none') RETURNING id`,
        [`c${n++}`, hostId, tpl, cpus, mem, disk],
      )
    )[0].id as string;

  /** Each host's counters and the sum over its live containers, which they must equal. */
  const both = async () => {
    const rows: { id: string; counters: number[]; sums: number[] }[] = await ds.query(
      `SELECT h.id,
              ARRAY[h.reserved_containers, h.reserved_cpus, h.reserved_memory_bytes, h.reserved_disk_bytes]::float[] AS counters,
              ARRAY[count(c.id), COALESCE(sum(GREATEST(c.cpus, c.held_cpus)), 0),
                    COALESCE(sum(GREATEST(c.memory_bytes, c.held_memory_bytes)), 0),
                    COALESCE(sum(c.disk_bytes), 0)]::float[] AS sums
       FROM hosts h LEFT JOIN containers c ON c.host_id = h.id AND c.destroyed_at IS NULL
       GROUP BY h.id`,
    );
    for (const r of rows)
      expect({ host: r.id, counters: r.counters }).toEqual({ host: r.id, counters: r.sums });
    return Object.fromEntries(rows.map((r) => [r.id, r.counters]));
  };

  it('follow creates, resizes, moves, destroys and deletes, and equal the sums at every step', async () => {
    expect(await both()).toEqual({ [h1]: [0, 0, 0, 0], [h2]: [0, 0, 0, 0] });
    const a = await create(h1, 1.5, 100, 1000);
    const b = await create(h1, 0.25, 50, 500);
    await create(null, 1, 1, 1); // no host (yet): counts nowhere
    expect((await both())[h1]).toEqual([2, 1.75, 150, 1500]);
    // Resize (and an update of other columns, which changes nothing).
    await ds.query(`UPDATE containers SET cpus = 2, memory_bytes = 300 WHERE id = $1`, [a]);
    await ds.query(`UPDATE containers SET state = 'running', cpus = cpus WHERE id = $1`, [b]);
    expect((await both())[h1]).toEqual([2, 2.25, 350, 1500]);
    // Moved to another host.
    await ds.query(`UPDATE containers SET host_id = $2 WHERE id = $1`, [b, h2]);
    expect(await both()).toEqual({ [h1]: [1, 2, 300, 1000], [h2]: [1, 0.25, 50, 500] });
    // Destroyed: no longer reserves; a later change of a destroyed row changes nothing.
    await ds.query(`UPDATE containers SET destroyed_at = now(), state = 'destroyed' WHERE id = $1`, [a]);
    await ds.query(`UPDATE containers SET cpus = 3 WHERE id = $1`, [a]);
    expect((await both())[h1]).toEqual([0, 0, 0, 0]);
    // Deleted rows (live or not) and several rows in one statement.
    await create(h2, 1, 10, 10);
    await ds.query(`DELETE FROM containers WHERE id = $1`, [a]);
    await ds.query(`DELETE FROM containers WHERE host_id = $1`, [h2]);
    expect(await both()).toEqual({ [h1]: [0, 0, 0, 0], [h2]: [0, 0, 0, 0] });
    // A rolled back change leaves them as they were.
    await ds
      .transaction(async (m) => {
        await m.query(
          `INSERT INTO containers (id, name, host_id, template_id, state, target_state, cpus, memory_bytes,
                                   disk_bytes, pids_max, network_mode)
           VALUES (gen_random_uuid(), 'rolled-back', $1, $2, 'creating', 'running', 1, 1, 1, 64, 'none')`,
          [h1, tpl],
        );
        throw new Error('rollback');
      })
      .catch(() => undefined);
    expect((await both())[h1]).toEqual([0, 0, 0, 0]);
  });

  it('are filled from the containers that exist when the migration runs', async () => {
    await create(h1, 1, 100, 1000);
    await create(h1, 2, 200, 2000);
    const gone = await create(h2, 4, 400, 4000);
    await ds.query(`UPDATE containers SET destroyed_at = now() WHERE id = $1`, [gone]);
    await create(h2, 0.5, 5, 50);
    const before = await both();
    // Back to before HostReservations (and whatever came after it), then forward again.
    const hasCounters = async () =>
      (
        await ds.query(
          `SELECT EXISTS (SELECT 1 FROM information_schema.columns
                          WHERE table_name = 'hosts' AND column_name = 'reserved_cpus') AS e`,
        )
      )[0].e as boolean;
    while (await hasCounters()) await ds.undoLastMigration({ transaction: 'each' });
    await ds.runMigrations({ transaction: 'each' });
    expect(await both()).toEqual(before);
    expect(before).toEqual({ [h1]: [2, 3, 300, 3000], [h2]: [1, 0.5, 5, 50] });
  });

  it('count what pending resize jobs hold, from their acceptance to their end, whatever the end', async () => {
    await ds.query(`DELETE FROM containers`);
    const c = await create(h1, 1, 100, 1000);
    const resize = async (resources: object, state = 'queued') =>
      (
        await ds.query(
          `INSERT INTO jobs (kind, state, container_id, host_id, params, requested_by)
           VALUES ('container.resize', $1, $2, $3, $4, 'test') RETURNING id`,
          [state, c, h1, JSON.stringify({ containerId: c, resources })],
        )
      )[0].id as string;
    const end = (id: string, state: string) =>
      ds.query(`UPDATE jobs SET state = $2 WHERE id = $1`, [id, state]);
    const held = async () =>
      (
        await ds.query(
          `SELECT held_cpus::float AS cpus, held_memory_bytes::float AS mem FROM containers WHERE id = $1`,
          [c],
        )
      )[0];
    // Accepted: the growth counts at once; two pending growths count as the larger.
    const g1 = await resize({ memoryBytes: 300 });
    expect((await both())[h1]).toEqual([1, 1, 300, 1000]);
    const g2 = await resize({ cpus: 2, memoryBytes: 200 });
    expect((await both())[h1]).toEqual([1, 2, 300, 1000]);
    expect(await held()).toEqual({ cpus: 2, mem: 300 });
    // Claimed (active) still holds; another job kind or an ended resize holds nothing.
    await end(g1, 'active');
    await resize({ memoryBytes: 5000 }, 'failed');
    await ds.query(
      `INSERT INTO jobs (kind, state, container_id, host_id, params, requested_by)
       VALUES ('container.start', 'queued', $1, $2, '{"resources": {"memoryBytes": 9000}}', 'test')`,
      [c, h1],
    );
    expect((await both())[h1]).toEqual([1, 2, 300, 1000]);
    // g1 fails: g2 still holds its own; g2 completes with the row's new limits: they count, nothing held.
    await end(g1, 'failed');
    expect((await both())[h1]).toEqual([1, 2, 200, 1000]);
    await ds.transaction(async (m) => {
      await m.query(`UPDATE containers SET cpus = 2, memory_bytes = 200 WHERE id = $1`, [c]);
      await m.query(`UPDATE jobs SET state = 'completed' WHERE id = $1`, [g2]);
    });
    expect(await held()).toEqual({ cpus: 0, mem: 0 });
    expect((await both())[h1]).toEqual([1, 2, 200, 1000]);
    // Retried (back to queued), the failed growth holds again; cancelled, it lets go.
    await end(g1, 'queued');
    expect((await both())[h1]).toEqual([1, 2, 300, 1000]);
    await end(g1, 'cancelled');
    expect((await both())[h1]).toEqual([1, 2, 200, 1000]);
    // A destroyed container counts nowhere, held or not.
    await resize({ memoryBytes: 700 });
    await ds.query(`UPDATE containers SET destroyed_at = now() WHERE id = $1`, [c]);
    expect((await both())[h1]).toEqual([0, 0, 0, 0]);
  });

  it('a resize accepted while another of the same container ends is held: the trigger reads after the row lock', async () => {
    await ds.query(`DELETE FROM jobs`);
    await ds.query(`DELETE FROM containers`);
    const c = await create(h1, 1, 100, 1000);
    const insert = `INSERT INTO jobs (kind, state, container_id, host_id, params, requested_by)
                    VALUES ('container.resize', 'queued', $1, $2, $3, 'test') RETURNING id`;
    const params = (memoryBytes: number) => [
      c,
      h1,
      JSON.stringify({ containerId: c, resources: { memoryBytes } }),
    ];
    const b = ((await ds.query(insert, params(200))) as { id: string }[])[0].id;
    expect((await both())[h1]).toEqual([1, 1, 200, 1000]);
    const url = (ds.options as { url: string }).url;
    const api = new Client({ connectionString: url });
    const worker = new Client({ connectionString: url });
    await api.connect();
    await worker.connect();
    try {
      // The API accepts resize A: it holds the container's row (as ContainersService does) …
      await api.query('BEGIN');
      await api.query(`SELECT 1 FROM containers WHERE id = $1 FOR UPDATE`, [c]);
      // … while the worker ends resize B, whose trigger waits for that row.
      const ended = worker.query(`UPDATE jobs SET state = 'completed' WHERE id = $1`, [b]);
      const pid = (worker as unknown as { processID: number }).processID;
      for (let i = 0; ; i++) {
        const [{ waiting }] = await ds.query(
          `SELECT wait_event_type = 'Lock' AS waiting FROM pg_stat_activity WHERE pid = $1`,
          [pid],
        );
        if (waiting) break;
        if (i > 200) throw new Error("the worker's update never waited for the row");
        await new Promise((r) => setTimeout(r, 10));
      }
      await api.query(insert, params(300));
      await api.query('COMMIT');
      await ended;
    } finally {
      await api.end();
      await worker.end();
    }
    // A is pending and held; B's end did not drop it.
    const [held] = await ds.query(`SELECT held_memory_bytes::float AS mem FROM containers WHERE id = $1`, [
      c,
    ]);
    expect(held.mem).toBe(300);
    expect((await both())[h1]).toEqual([1, 1, 300, 1000]);
  });
});
