import { RuntimeError } from '../common/errors';

/** The group does not exist (in the hierarchy the operation needed). */
export class CgroupNotFoundError extends RuntimeError {
  constructor(path: string, context: Record<string, unknown> = {}) {
    super('CGROUP_NOT_FOUND', `cgroup ${path} does not exist: create it first`, { path, ...context });
  }
}

/** The group still holds processes, so the kernel would refuse to remove it. */
export class CgroupBusyError extends RuntimeError {
  constructor(path: string, pids: number[]) {
    super(
      'CGROUP_BUSY',
      `cgroup ${path} still has ${pids.length} process(es) (${pids.slice(0, 10).join(', ')}): stop or killAll them first`,
      { path, pids },
    );
  }
}

/**
 * The kernel refused a limit, typically memory below what the group uses and cannot reclaim. The previous
 * limit is still in force.
 */
export class CgroupLimitRejectedError extends RuntimeError {
  constructor(path: string, limit: string, requested: number, current: number | null, cause?: unknown) {
    super(
      'CGROUP_LIMIT_REJECTED',
      `cgroup ${path}: the kernel refused ${limit}=${requested}` +
        (current === null ? '' : ` (the group uses ${current} and it could not be reclaimed)`) +
        ': free memory in the container or choose a higher limit',
      { path, limit, requested, current },
      { cause },
    );
  }
}

/** A controller or knob this host does not have. */
export class CgroupUnsupportedError extends RuntimeError {
  constructor(what: string, context: Record<string, unknown> = {}) {
    super('UNSUPPORTED', `cgroup ${what} is not available on this host (see capabilities())`, context);
  }
}

/** The kernel did not reach the wanted freezer state in time. */
export class CgroupTimeoutError extends RuntimeError {
  constructor(path: string, wanted: string, timeoutMs: number) {
    super('TIMEOUT', `cgroup ${path} did not become ${wanted} within ${timeoutMs} ms`, {
      path,
      wanted,
      timeoutMs,
    });
  }
}

/** Wraps an fs error from cgroupfs with the operation and file (youki's wrapped IO errors). */
export function cgroupFsError(op: string, file: string, cause: unknown): RuntimeError {
  const code = (cause as NodeJS.ErrnoException | undefined)?.code;
  const denied = code === 'EACCES' || code === 'EPERM';
  return new RuntimeError(
    denied ? 'KERNEL_EPERM' : 'KERNEL_ERROR',
    `cgroup ${op} ${file} failed (${code ?? String(cause)})` + (denied ? ': Berth must run as root' : ''),
    { op, file, errno: code },
    { cause },
  );
}
