import { JOB_KINDS, type JobKind } from '@berth/jobs';
import type { JobHandler } from './job-context';
import { containerCreateJob } from './container-create/container-create.job';
import { containerDestroyJob } from './container-destroy/container-destroy.job';
import { containerPauseJob } from './container-pause/container-pause.job';
import { containerResizeJob } from './container-resize/container-resize.job';
import { containerRestartJob } from './container-restart/container-restart.job';
import { containerResumeJob } from './container-resume/container-resume.job';
import { containerSnapshotJob } from './container-snapshot/container-snapshot.job';
import { containerStartJob } from './container-start/container-start.job';
import { containerStopJob } from './container-stop/container-stop.job';
import { systemNoopJob } from './system-noop/system-noop.job';
import { templateImportJob } from './template-import/template-import.job';

export const ALL_HANDLERS: JobHandler[] = [
  containerCreateJob,
  containerStartJob,
  containerStopJob,
  containerRestartJob,
  containerPauseJob,
  containerResumeJob,
  containerResizeJob,
  containerSnapshotJob,
  containerDestroyJob,
  templateImportJob,
  systemNoopJob,
] as JobHandler[];

/**
 * The handler of each job kind. Fails loudly at start-up when a kind has no handler or two, saying how to
 * fix it, instead of failing jobs at run time.
 */
export function buildRegistry(handlers: JobHandler[] = ALL_HANDLERS): Map<JobKind, JobHandler> {
  const map = new Map<JobKind, JobHandler>();
  for (const h of handlers) {
    if (map.has(h.kind))
      throw new Error(`two handlers for job kind ${h.kind}: keep one in apps/worker/src/jobs/`);
    map.set(h.kind, h);
  }
  const missing = JOB_KINDS.filter((k) => !map.has(k));
  if (missing.length) {
    throw new Error(
      `no handler for job kind(s) ${missing.join(', ')}: add apps/worker/src/jobs/<kind>/ and list it in job-registry.ts`,
    );
  }
  return map;
}
