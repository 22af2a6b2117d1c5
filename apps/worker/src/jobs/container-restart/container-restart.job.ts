import { lifecycleJob } from '../shared/lifecycle-job';

export const containerRestartJob = lifecycleJob('container.restart', (rt, id) => rt.containers.restart(id));
