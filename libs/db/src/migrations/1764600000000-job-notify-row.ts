import type { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * `berth_job_notify()` with the action payload of JobNotifyAction, plus `ended` (PL/pgSQL run before the
 * notification, may extend `head`) and `skip` (actions that do not notify). Also used by later migrations.
 */
export const jobNotifyFunction = (ended: string, skip: string[] = []) => `
  CREATE OR REPLACE FUNCTION berth_job_notify() RETURNS trigger LANGUAGE plpgsql AS $fn$
  DECLARE
    head text;
    body text;
  BEGIN
    IF current_setting('berth.defer_notify', true) = 'on' THEN
      RETURN NEW;
    ELSIF TG_TABLE_NAME = 'jobs' THEN
      PERFORM pg_notify('berth_job', NEW.id::text);
    ELSIF NEW.job_id IS NOT NULL${skip.length ? ` AND NEW.action NOT IN (${skip.map((a) => `'${a}'`).join(', ')})` : ''} THEN
      head := NEW.job_id::text || ' ' || NEW.action;
      ${ended}
      PERFORM pg_notify('berth_job', head);
    END IF;
    RETURN NEW;
  END
  $fn$;
`;

/** What JobNotifyRow adds before the notification: the job's row, for a job's end. */
export const ENDED_WITH_ROW = `
      IF NEW.action IN ('job.completed', 'job.failed', 'job.cancelled') THEN
        SELECT row_to_json(j)::text INTO body FROM jobs j WHERE j.id = NEW.job_id;
        IF body IS NOT NULL AND octet_length(head) + octet_length(body) < 7900 THEN
          head := head || ' ' || body;
        END IF;
      END IF;`;

/**
 * A job's end brings the job with it: the `berth_job` notification of `job.completed`, `job.failed` and
 * `job.cancelled` is `<job id> <action> <the jobs row as JSON>` (as the transaction that ends the job
 * wrote it: the trigger runs after that transaction's update of the row, and the notification is delivered
 * only if it commits), so a long-poll answers from the notification instead of reading the job back: one
 * PostgreSQL round trip less between a job's end and its waiters' answers, and no read per waiter. A row
 * that would not fit PostgreSQL's 8000-byte payload (a large result) is left out: the waiter reads it.
 */
export class JobNotifyRow1764600000000 implements MigrationInterface {
  name = 'JobNotifyRow1764600000000';

  async up(q: QueryRunner): Promise<void> {
    await q.query(jobNotifyFunction(ENDED_WITH_ROW));
  }

  async down(q: QueryRunner): Promise<void> {
    await q.query(jobNotifyFunction(''));
  }
}
