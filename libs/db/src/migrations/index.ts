import { InitialSchema1764000000000 } from './1764000000000-initial-schema';
import { JobPipeline1764100000000 } from './1764100000000-job-pipeline';

/** Every migration, in order. Listed explicitly (no globs) so compiled and ts-node runs see the same set. */
export const migrations = [InitialSchema1764000000000, JobPipeline1764100000000];
