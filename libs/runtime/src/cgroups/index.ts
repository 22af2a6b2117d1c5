export * from './cgroup.driver';
export * from './cgroup.errors';
export * from './cgroup.paths';
export {
  CPU_PERIOD_US,
  cpuWeightToShares,
  ioWeightToBlkioWeight,
  cpusToQuotaUs,
  validateLimits,
} from './cgroup.limits';
export { detectCgroups, detectCgroupLayout } from './cgroup.detect';
export type { CgroupLayout, DetectOptions } from './cgroup.detect';
export { CgroupV1Driver } from './v1/cgroup-v1.driver';
export type { CgroupV1Options } from './v1/cgroup-v1.driver';
export { CgroupV2Driver } from './v2/cgroup-v2.driver';
export type { CgroupV2Options } from './v2/cgroup-v2.driver';
export { ALL_DEVICES, CONTAINER_DEVICE_RULES } from './device-rules';
