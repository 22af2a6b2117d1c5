import type { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * `audit_events.xact`: the id of the transaction that wrote the event. Event ids come from one sequence,
 * taken when a row is inserted, while transactions commit in their own order: a reader paging forward by
 * id (`GET /v1/audit?after=`) could see event 415 before event 413 of a transaction still open, move its
 * cursor past 413, and never see it. Paged by (xact, id) and only up to the oldest transaction still
 * running (`pg_snapshot_xmin`), every page is final: no event can appear later before its end. A bigint
 * (xid8 as a number: no BRIN operator class for xid8) with a BRIN index: transaction ids grow with the
 * table's append order, so a tail's range is a few block ranges, and each event pays no btree insertion.
 * Events written before this migration share its transaction id (they keep their id order).
 */
export class AuditCommitOrder1765300000000 implements MigrationInterface {
  name = 'AuditCommitOrder1765300000000';

  async up(q: QueryRunner): Promise<void> {
    await q.query(
      `ALTER TABLE audit_events ADD COLUMN xact bigint NOT NULL DEFAULT (pg_current_xact_id()::text::bigint)`,
    );
    await q.query(
      `CREATE INDEX audit_events_xact_brin ON audit_events USING brin (xact) WITH (autosummarize = on)`,
    );
  }

  async down(q: QueryRunner): Promise<void> {
    await q.query(`DROP INDEX IF EXISTS audit_events_xact_brin`);
    await q.query(`ALTER TABLE audit_events DROP COLUMN xact`);
  }
}
