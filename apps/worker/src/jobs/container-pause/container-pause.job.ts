import { lifecycleJob } from '../shared/lifecycle-job';

export const containerPauseJob = lifecycleJob('container.pause', (rt, id) => rt.containers.pause(id));
