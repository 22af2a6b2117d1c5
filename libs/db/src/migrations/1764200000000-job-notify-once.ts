import type { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * One `berth_job` notification per job change instead of two: only the audit event notifies. Every job
 * transition writes its audit event in the same transaction (queued, active, step done, completed, failed,
 * retry, retry requested, cancelled), so waiters still wake at commit; a bare `jobs` update (progress) no
 * longer makes its transaction a notifying one. That matters beyond the duplicate: PostgreSQL serializes
 * the commits of notifying transactions (one global lock on the notification queue), and progress writes
 * are on every job's path.
 */
export class JobNotifyOnce1764200000000 implements MigrationInterface {
  name = 'JobNotifyOnce1764200000000';

  async up(q: QueryRunner): Promise<void> {
    await q.query(`DROP TRIGGER jobs_notify ON jobs`);
  }

  async down(q: QueryRunner): Promise<void> {
    await q.query(`
      CREATE TRIGGER jobs_notify AFTER INSERT OR UPDATE ON jobs
        FOR EACH ROW EXECUTE FUNCTION berth_job_notify();
    `);
  }
}
