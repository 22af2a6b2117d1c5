import type { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * Which worker process holds a host row (`instance_id`, random per process) and on which machine it runs
 * (`machine_id`: /etc/machine-id and the kernel's boot id, see the worker). Two workers started with the
 * same BERTH_HOST_NAME on different machines (cloned VMs keep their hostname) shared one host id and one
 * queue: a container created on one machine had its later jobs run on the other. A worker now takes the row only when nobody live holds it (offline,
 * or its heartbeat too old) or from its own machine; its heartbeats and its offline mark touch the row only
 * while it holds it. Null on rows from before: taken by the next worker that registers.
 */
export class HostInstance1765100000000 implements MigrationInterface {
  name = 'HostInstance1765100000000';

  async up(q: QueryRunner): Promise<void> {
    await q.query(`ALTER TABLE hosts ADD COLUMN instance_id uuid, ADD COLUMN machine_id text`);
  }

  async down(q: QueryRunner): Promise<void> {
    await q.query(`ALTER TABLE hosts DROP COLUMN instance_id, DROP COLUMN machine_id`);
  }
}
