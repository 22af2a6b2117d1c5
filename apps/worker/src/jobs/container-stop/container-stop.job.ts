import { lifecycleJob } from '../shared/lifecycle-job';

export const containerStopJob = lifecycleJob('container.stop', (rt, id, p) =>
  rt.containers.stop(id, p.timeoutMs),
);
