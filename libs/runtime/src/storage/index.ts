export * from './storage.driver';
export * from './registry';
export * from './btrfs.driver';
export * from './overlay.driver';
export * from './dir.driver';
export * from './loop-pool';
export * from './volume-id';
export { parseMountInfo, readMounts, mountAt, mountsUnder } from './mount-table';
export type { MountEntry } from './mount-table';
