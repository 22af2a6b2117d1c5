import type { MigrationInterface, QueryRunner } from 'typeorm';
import { ENDED_WITH_ROW, jobNotifyFunction } from './1764600000000-job-notify-row';

/**
 * The worker's `job.active` mark notifies nobody (it used to be silenced by the claim's own statement,
 * which can now share its statement and transaction with other jobs' completions, whose ends must notify).
 * Why silent: a notifying commit takes PostgreSQL's global notify lock, held through the commit of every
 * other notifying transaction including their WAL flush, and wakes every listening connection of the
 * database; claims are on every job's critical path. A long-poll waits for a job's end and ignores the
 * mark; an event stream shows it with the job's next event or at the next look of the followers' safety
 * net (JobNotifications.sweep, 1 s; a 2 s re-check per stream when this was written).
 */
export class JobActiveSilent1764700000000 implements MigrationInterface {
  name = 'JobActiveSilent1764700000000';

  async up(q: QueryRunner): Promise<void> {
    await q.query(jobNotifyFunction(ENDED_WITH_ROW, ['job.active']));
  }

  async down(q: QueryRunner): Promise<void> {
    await q.query(jobNotifyFunction(ENDED_WITH_ROW));
  }
}
