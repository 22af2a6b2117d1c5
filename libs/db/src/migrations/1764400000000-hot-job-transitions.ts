import type { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * Makes a job's transitions cheap: no index of `jobs` covers a column a transition changes (state,
 * attempts, progress, result, errors, timestamps), and its pages keep room (fillfactor 70), so
 * PostgreSQL updates the row in place (a HOT update: no new entry in any index) instead of inserting a
 * new entry into every index of the table at every transition (queued → active → completed was 2 × 8
 * index insertions per job). The indexes that named `state` are replaced by ones on columns a job never
 * changes (host, campaign); listing jobs by state walks `jobs_created_idx` (newest first) and filters.
 *
 * The outbox keeps only what is still to publish: the relay deletes a row once its job is in BullMQ
 * (jobs and audit_events are the record), so the table stays a handful of rows and needs no index on
 * `published_at`.
 */
export class HotJobTransitions1764400000000 implements MigrationInterface {
  name = 'HotJobTransitions1764400000000';

  async up(q: QueryRunner): Promise<void> {
    await q.query(`
      DROP INDEX jobs_state_created_idx;
      DROP INDEX jobs_host_state_idx;
      DROP INDEX jobs_campaign_state_idx;
      DROP INDEX jobs_container_created_idx;
      DROP INDEX jobs_kind_created_idx;
      CREATE INDEX jobs_kind_created_idx ON jobs (kind, created_at DESC, id DESC);
      CREATE INDEX jobs_host_created_idx ON jobs (host_id, created_at DESC, id DESC);
      CREATE INDEX jobs_campaign_idx ON jobs (campaign_id) WHERE campaign_id IS NOT NULL;
      ALTER TABLE jobs SET (fillfactor = 70);
      DELETE FROM outbox WHERE published_at IS NOT NULL;
      DROP INDEX outbox_unpublished_idx;
    `);
  }

  async down(q: QueryRunner): Promise<void> {
    await q.query(`
      CREATE INDEX outbox_unpublished_idx ON outbox (id) WHERE published_at IS NULL;
      ALTER TABLE jobs RESET (fillfactor);
      DROP INDEX jobs_campaign_idx;
      DROP INDEX jobs_host_created_idx;
      DROP INDEX jobs_kind_created_idx;
      CREATE INDEX jobs_kind_created_idx ON jobs (kind, created_at DESC);
      CREATE INDEX jobs_container_created_idx ON jobs (container_id, created_at DESC);
      CREATE INDEX jobs_campaign_state_idx ON jobs (campaign_id, state) WHERE campaign_id IS NOT NULL;
      CREATE INDEX jobs_host_state_idx ON jobs (host_id, state);
      CREATE INDEX jobs_state_created_idx ON jobs (state, created_at DESC);
    `);
  }
}
