import type { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * The job pipeline: a container's target state (what it will be once every accepted job has run, so the
 * API can accept create + start + stop fired back to back), and a notification per job change so
 * long-polls and event streams wake at once instead of polling.
 */
export class JobPipeline1764100000000 implements MigrationInterface {
  name = 'JobPipeline1764100000000';

  async up(q: QueryRunner): Promise<void> {
    await q.query(`
      ALTER TABLE containers ADD COLUMN target_state text;
      UPDATE containers SET target_state = state;
      ALTER TABLE containers ALTER COLUMN target_state SET NOT NULL;
      ALTER TABLE containers ADD CONSTRAINT containers_target_state_check CHECK (target_state IN ('creating',
        'stopped', 'running', 'paused', 'suspended', 'destroying', 'destroyed', 'error'));

      CREATE FUNCTION berth_job_notify() RETURNS trigger LANGUAGE plpgsql AS $fn$
      BEGIN
        IF TG_TABLE_NAME = 'jobs' THEN
          PERFORM pg_notify('berth_job', NEW.id::text);
        ELSIF NEW.job_id IS NOT NULL THEN
          PERFORM pg_notify('berth_job', NEW.job_id::text);
        END IF;
        RETURN NEW;
      END
      $fn$;
      CREATE TRIGGER jobs_notify AFTER INSERT OR UPDATE ON jobs
        FOR EACH ROW EXECUTE FUNCTION berth_job_notify();
      CREATE TRIGGER audit_events_job_notify AFTER INSERT ON audit_events
        FOR EACH ROW EXECUTE FUNCTION berth_job_notify();
    `);
  }

  async down(q: QueryRunner): Promise<void> {
    await q.query(`
      DROP TRIGGER audit_events_job_notify ON audit_events;
      DROP TRIGGER jobs_notify ON jobs;
      DROP FUNCTION berth_job_notify();
      ALTER TABLE containers DROP COLUMN target_state;
    `);
  }
}
