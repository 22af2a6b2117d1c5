import { InitialSchema1764000000000 } from './1764000000000-initial-schema';

/** Every migration, in order. Listed explicitly (no globs) so compiled and ts-node runs see the same set. */
export const migrations = [InitialSchema1764000000000];
