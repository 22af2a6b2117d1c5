import { lifecycleJob } from '../shared/lifecycle-job';

export const containerResumeJob = lifecycleJob('container.resume', (rt, id) => rt.containers.resume(id));
