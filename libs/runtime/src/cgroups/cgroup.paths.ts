import { InvalidArgumentError, RuntimeError } from '../common/errors';

/** Default parent group of every container group on a host. */
export const DEFAULT_CGROUP_PARENT = 'berth';

// Conservative: what container ids and host parents look like, and nothing a cgroupfs treats specially.
const SEGMENT = /^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$/;

/**
 * Validates a group path relative to the cgroupfs root and returns it normalised (no leading/trailing
 * slash). Some segment must start with `berth`, so the driver can only ever touch groups Berth owns.
 * @throws RuntimeError INVALID_PATH.
 */
export function validateCgroupPath(path: string): string {
  const trimmed = typeof path === 'string' ? path.replace(/^\/+|\/+$/g, '') : '';
  const segments = trimmed.split('/');
  const bad = (why: string) =>
    new RuntimeError('INVALID_PATH', `invalid cgroup path ${JSON.stringify(path)}: ${why}`, { path });
  if (!trimmed) throw bad('empty');
  if (path.startsWith('/')) throw bad('must be relative to the cgroupfs root');
  for (const s of segments) {
    if (s === '.' || s === '..' || !SEGMENT.test(s)) throw bad(`segment ${JSON.stringify(s)} is not allowed`);
    // cgroupfs puts its own files next to groups; a group named like one would be confusing or refused.
    if (/^(cgroup|cpu|cpuacct|cpuset|memory|pids|io|blkio|freezer|hugetlb|rdma|misc)\./.test(s)) {
      throw bad(`segment ${JSON.stringify(s)} looks like a cgroupfs control file`);
    }
  }
  if (!segments.some((s) => s.startsWith('berth'))) {
    throw bad('it must lie under a group whose name starts with "berth"');
  }
  return segments.join('/');
}

/** `<parent>/<containerId>`, validated. */
export function cgroupPath(containerId: string, parent: string = DEFAULT_CGROUP_PARENT): string {
  if (!SEGMENT.test(containerId)) {
    throw new InvalidArgumentError(`invalid container id for a cgroup: ${JSON.stringify(containerId)}`, {
      containerId,
    });
  }
  return validateCgroupPath(`${validateCgroupPath(parent)}/${containerId}`);
}

/** Validates a pid a caller wants to move into a group. */
export function validatePid(pid: number): number {
  if (!Number.isSafeInteger(pid) || pid <= 0) {
    throw new InvalidArgumentError(`invalid pid ${pid}`, { pid });
  }
  return pid;
}
