import type { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * `jobs.carrier`: the BullMQ job that currently carries a job, once it has had more than one (a retry
 * through the API publishes `<id>-r<n>`, the worker's start-up sweep `<id>-k<n>`); null while the job
 * has only ever had its first carrier (BullMQ job id = the job's id). The worker claims a job only
 * through its current carrier: an older carrier still in Redis (a cancelled job's, waiting or delayed
 * there when the job was retried) would otherwise claim the job again and run it a second time, side by
 * side with the new one. Rows from before this migration stay null: claimed as before, by any carrier.
 */
export class JobCarrier1765000000000 implements MigrationInterface {
  name = 'JobCarrier1765000000000';

  async up(q: QueryRunner): Promise<void> {
    await q.query(`ALTER TABLE jobs ADD COLUMN carrier text`);
  }

  async down(q: QueryRunner): Promise<void> {
    await q.query(`ALTER TABLE jobs DROP COLUMN carrier`);
  }
}
