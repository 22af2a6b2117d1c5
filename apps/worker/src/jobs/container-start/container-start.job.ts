import { lifecycleJob } from '../shared/lifecycle-job';

export const containerStartJob = lifecycleJob('container.start', (rt, id) => rt.containers.start(id));
