export interface ContainerRow {
  id: string;
  tenant_id: string | null;
  name: string;
  host_id: string | null;
  template_id: string | null;
  template_name?: string | null;
  state: string;
  target_state: string;
  cpus: string;
  memory_bytes: string;
  disk_bytes: string;
  pids_max: number;
  network_mode: 'none' | 'bridge';
  ip_address: string | null;
  last_job_id: string | null;
  error_code: string | null;
  created_at: Date;
  updated_at: Date;
  destroyed_at: Date | null;
}

export interface ContainerView {
  id: string;
  name: string;
  tenantId: string | null;
  state: string;
  /** The state once every accepted job has run. */
  targetState: string;
  hostId: string | null;
  template: string | null;
  resources: { cpus: number; memoryBytes: number; diskBytes: number; pidsMax: number };
  network: { mode: 'none' | 'bridge'; ipAddress: string | null };
  lastJobId: string | null;
  /** The failure that left the container other than its request asked (see ContainerDto.errorCode). */
  errorCode: string | null;
  createdAt: string;
  updatedAt: string;
  destroyedAt: string | null;
}

export function toContainerView(r: ContainerRow): ContainerView {
  return {
    id: r.id,
    name: r.name,
    tenantId: r.tenant_id,
    state: r.state,
    targetState: r.target_state,
    hostId: r.host_id,
    template: r.template_name ?? null,
    resources: {
      cpus: Number(r.cpus),
      memoryBytes: Number(r.memory_bytes),
      diskBytes: Number(r.disk_bytes),
      pidsMax: r.pids_max,
    },
    network: { mode: r.network_mode, ipAddress: r.ip_address },
    lastJobId: r.last_job_id,
    errorCode: r.error_code,
    createdAt: r.created_at.toISOString(),
    updatedAt: r.updated_at.toISOString(),
    destroyedAt: r.destroyed_at?.toISOString() ?? null,
  };
}

export const CONTAINER_SELECT = `SELECT c.*, t.name AS template_name FROM containers c
  LEFT JOIN templates t ON t.id = c.template_id`;
