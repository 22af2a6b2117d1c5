import type { InitRef } from '../namespaces/init-process';

/** Resources of a container; all enforced by its cgroup and changeable live (resize). */
export interface ContainerResources {
  /** CPU bandwidth in (fractional) cores. */
  cpus: number;
  /** Hard memory limit in bytes; swap is off. */
  memoryBytes: number;
  /** Maximum number of processes/threads. */
  pidsMax: number;
}

export type NetworkMode = 'none' | 'bridge';

/** What a container is, as asked for at create time. */
export interface ContainerSpec {
  /** Stable id (the API's UUID, or a DNS label from the CLI): names the cgroup, volume and state dir. */
  id: string;
  /** Hostname inside the container (a DNS label). */
  hostname: string;
  /** Template the rootfs is cloned from. */
  template: string;
  resources: ContainerResources;
  network: { mode: NetworkMode; address?: string };
  /**
   * Privileged containers run with real root inside (no user namespace). The default (false) maps
   * container root to an unprivileged host uid range; a host without user namespaces refuses it.
   */
  privileged: boolean;
}

/** The runtime's own view of a container's state (the API has a richer state machine on top). */
export type ContainerStatus = 'creating' | 'stopped' | 'running' | 'paused';

/** What is on disk for a container (config.json). */
export interface ContainerConfig {
  spec: ContainerSpec;
  storageDriver: string;
  /** Host uid that container root maps to; null for privileged containers. */
  usernsHostUid: number | null;
  createdAt: string;
  /** Set until creation finished: a crash leaves it, and reconcile treats the container as half-created. */
  creating?: boolean;
}

/** The truth about one container, rebuilt from disk + /proc + cgroupfs. */
export interface ContainerInfo {
  id: string;
  status: ContainerStatus;
  spec: ContainerSpec;
  storageDriver: string;
  init: InitRef | null;
  ipAddress: string | null;
  createdAt: string;
}

/** Answer of an idempotent operation: `changed: false` when it was already in the asked state. */
export interface OperationResult {
  changed: boolean;
  info: ContainerInfo;
}

/** Things that exist on the host with Berth's prefix but belong to no container record. */
export interface ReconcileReport {
  orphanCgroups: string[];
  orphanVolumes: string[];
  orphanVeths: string[];
  orphanAddresses: string[];
  /** Containers whose creation never finished (a crash mid-create). */
  halfCreated: string[];
  /** Records that said running but whose init is gone (now marked stopped). */
  deadInits: string[];
  /** True when the orphans above were removed. */
  removed: boolean;
}
