import type { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * Drops `audit_events_occurred_idx`: no query reads the audit trail by time (`GET /v1/audit` and a job's
 * events walk `id` within a subject or a job), and every job writes three or more audit events, so the
 * index cost each of them an insertion for nothing. `id` (one sequence) follows the order of insertion. A
 * time-ranged audit query would bring an index back (a BRIN index on `occurred_at` is cheap to keep).
 */
export class AuditIndexUnused1764800000000 implements MigrationInterface {
  name = 'AuditIndexUnused1764800000000';

  async up(q: QueryRunner): Promise<void> {
    await q.query(`DROP INDEX IF EXISTS audit_events_occurred_idx`);
  }

  async down(q: QueryRunner): Promise<void> {
    await q.query(`CREATE INDEX IF NOT EXISTS audit_events_occurred_idx ON audit_events (occurred_at)`);
  }
}
