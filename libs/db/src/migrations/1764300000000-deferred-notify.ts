import type { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * Lets a transaction send its notifications after its commit instead of from its triggers: with
 * `berth.defer_notify = on` (set_config(…, true): that transaction only) the `berth_job` and `berth_outbox`
 * triggers stay silent, and the writer notifies in a separate, non-durable statement once it has
 * committed. Why: PostgreSQL serializes the commits of notifying transactions (a global lock held until
 * the commit is done), including their WAL flush, so durable notifying commits (every enqueue, every
 * job's end) queued up one fsync at a time. Every other writer keeps the trigger's notification at commit.
 * A crash between the commit and the late notification is covered by the relays' poll and the waiters'
 * safety re-check.
 */
export class DeferredNotify1764300000000 implements MigrationInterface {
  name = 'DeferredNotify1764300000000';

  async up(q: QueryRunner): Promise<void> {
    await q.query(`
      CREATE OR REPLACE FUNCTION berth_job_notify() RETURNS trigger LANGUAGE plpgsql AS $fn$
      BEGIN
        IF current_setting('berth.defer_notify', true) = 'on' THEN
          RETURN NEW;
        ELSIF TG_TABLE_NAME = 'jobs' THEN
          PERFORM pg_notify('berth_job', NEW.id::text);
        ELSIF NEW.job_id IS NOT NULL THEN
          PERFORM pg_notify('berth_job', NEW.job_id::text);
        END IF;
        RETURN NEW;
      END
      $fn$;
      CREATE OR REPLACE FUNCTION berth_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $fn$
      BEGIN
        IF current_setting('berth.defer_notify', true) IS DISTINCT FROM 'on' THEN
          PERFORM pg_notify('berth_outbox', NEW.id::text);
        END IF;
        RETURN NEW;
      END
      $fn$;
    `);
  }

  async down(q: QueryRunner): Promise<void> {
    await q.query(`
      CREATE OR REPLACE FUNCTION berth_job_notify() RETURNS trigger LANGUAGE plpgsql AS $fn$
      BEGIN
        IF TG_TABLE_NAME = 'jobs' THEN
          PERFORM pg_notify('berth_job', NEW.id::text);
        ELSIF NEW.job_id IS NOT NULL THEN
          PERFORM pg_notify('berth_job', NEW.job_id::text);
        END IF;
        RETURN NEW;
      END
      $fn$;
      CREATE OR REPLACE FUNCTION berth_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $fn$
      BEGIN
        PERFORM pg_notify('berth_outbox', NEW.id::text);
        RETURN NEW;
      END
      $fn$;
    `);
  }
}
