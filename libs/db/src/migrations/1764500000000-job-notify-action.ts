import type { MigrationInterface, QueryRunner } from 'typeorm';

/** `berth_job_notify()` sending `payload` (an SQL expression over the audit event `NEW`) for a job's event. */
const notifyFunction = (payload: string) => `
  CREATE OR REPLACE FUNCTION berth_job_notify() RETURNS trigger LANGUAGE plpgsql AS $fn$
  BEGIN
    IF current_setting('berth.defer_notify', true) = 'on' THEN
      RETURN NEW;
    ELSIF TG_TABLE_NAME = 'jobs' THEN
      PERFORM pg_notify('berth_job', NEW.id::text);
    ELSIF NEW.job_id IS NOT NULL THEN
      PERFORM pg_notify('berth_job', ${payload});
    END IF;
    RETURN NEW;
  END
  $fn$;
`;

/**
 * A job's notification says what happened: the `berth_job` payload is `<job id> <audit action>` (e.g.
 * `… job.step.done`) instead of the bare job id. A long-poll waits for the job's end only, so it no longer
 * reads the job back from the database at every `active` mark and step record of a long job (each such
 * read woke PostgreSQL and the API while the host was doing the job's work); event streams still wake on
 * every change. A payload without an action (an older writer) still wakes everyone.
 */
export class JobNotifyAction1764500000000 implements MigrationInterface {
  name = 'JobNotifyAction1764500000000';

  async up(q: QueryRunner): Promise<void> {
    await q.query(notifyFunction(`NEW.job_id::text || ' ' || NEW.action`));
  }

  async down(q: QueryRunner): Promise<void> {
    await q.query(notifyFunction('NEW.job_id::text'));
  }
}
