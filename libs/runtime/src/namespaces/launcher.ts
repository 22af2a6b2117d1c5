import { existsSync } from 'node:fs';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { run } from '../common/exec';
import { DependencyMissingError, InvalidArgumentError, RuntimeError } from '../common/errors';
import { InitRef } from './init-process';

const HELPER_RELATIVE = join('libs', 'runtime', 'native', 'build', 'berth-launch');

/**
 * Path of the compiled berth-launch helper. Looks beside this source tree first, then in every parent
 * directory (so a compiled dist/ layout finds the checkout's build output too).
 * Throws DependencyMissingError naming scripts/build-native.sh when it was not built.
 */
export function helperPath(override?: string): string {
  if (override) {
    if (!existsSync(override)) throw missingHelper(override);
    return override;
  }
  const beside = resolve(__dirname, '..', '..', 'native', 'build', 'berth-launch');
  if (existsSync(beside)) return beside;
  for (let dir = __dirname; ; dir = dirname(dir)) {
    const candidate = join(dir, HELPER_RELATIVE);
    if (existsSync(candidate)) return candidate;
    if (dirname(dir) === dir) break;
  }
  throw missingHelper(beside);
}

function missingHelper(path: string): DependencyMissingError {
  return new DependencyMissingError(
    'berth-launch',
    `${path} does not exist: run scripts/build-native.sh (needs gcc; musl-tools for a tiny static binary)`,
  );
}

export interface LaunchOptions {
  /** Absolute path of the container's root directory (the overlay mount point when `overlay` is set). */
  rootfs: string;
  /** Absolute directory where the supervisor writes `init.pid` and, when init exits, `exit.status`. */
  stateDir: string;
  /** Hostname inside the container's UTS namespace (1-63 chars of [A-Za-z0-9-], dots between labels). */
  hostname?: string;
  /** cgroup.procs files (one per v1 controller, or one v2 file) that init joins before it runs. */
  cgroupProcs?: string[];
  /** File that receives init's stdout and stderr and the helper's diagnostics (appended). */
  logFile?: string;
  /** Unprivileged mode: container uid/gid 0..count-1 are host hostUid..hostUid+count-1. */
  userns?: { hostUid: number; count: number };
  /** Mount this overlay on `rootfs` inside the container's mount namespace. */
  overlay?: { lower: string; upper: string; work: string };
  /**
   * `none`: own network namespace with only loopback; `new`: own network namespace that the host will
   * move a veth into; `host`: share the host's (tests and debugging only). Default `none`.
   */
  net?: 'none' | 'new' | 'host';
  /**
   * FIFO the helper reads one byte from before exec'ing init (the host configures the network first). The
   * caller opens it for writing without blocking (`O_NONBLOCK`: ENXIO once init gave up and exited).
   */
  syncFifo?: string;
  /** How long init waits for that byte before it exits without exec'ing (the helper's default: 30 s). */
  syncTimeoutMs?: number;
  /** Init command and arguments; default ['/sbin/init']. */
  init?: string[];
  /** Kill the helper if it has not reported after this long (default 10000 ms). */
  timeoutMs?: number;
  /** Helper binary to use instead of helperPath(). */
  helper?: string;
}

export interface LaunchResult extends InitRef {
  /** Pid of the per-container supervisor (init's parent, writes exit.status). */
  supervisorPid: number;
  /** Steps that were skipped without failing the start, e.g. `/sys` under a user namespace. */
  warnings: string[];
}

/** A start that failed at a named step of the helper, with the errno the kernel returned. */
export class LaunchError extends RuntimeError {
  constructor(
    readonly step: string,
    readonly errno: number,
    message: string,
  ) {
    super(
      errno === 1 || errno === 13 ? 'KERNEL_EPERM' : 'KERNEL_ERROR',
      `container start failed at ${message}`,
      {
        step,
        errno,
      },
    );
  }
}

/** The environment init starts with: never the worker's own (it may hold secrets). */
export const INIT_ENV: Readonly<Record<string, string>> = {
  PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
  container: 'berth',
};

const HOSTNAME_RE =
  /^(?=.{1,64}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;

function absolutePath(name: string, value: string, extraForbidden = ''): string {
  if (!isAbsolute(value) || value.includes('\0') || [...extraForbidden].some((c) => value.includes(c))) {
    throw new RuntimeError(
      'INVALID_PATH',
      `${name} must be an absolute path${extraForbidden ? ` without '${extraForbidden}'` : ''}`,
      {
        [name]: value,
      },
    );
  }
  return value;
}

/**
 * Builds the helper's argument array from validated options (pure: unit-tested).
 * Throws INVALID_PATH / INVALID_NAME / INVALID_ARGUMENT for bad input.
 */
export function buildLaunchArgs(opts: LaunchOptions): string[] {
  const args = [
    '--rootfs',
    absolutePath('rootfs', opts.rootfs),
    '--state-dir',
    absolutePath('stateDir', opts.stateDir),
  ];
  if (opts.hostname !== undefined) {
    if (!HOSTNAME_RE.test(opts.hostname)) {
      throw new RuntimeError('INVALID_NAME', `invalid hostname: ${JSON.stringify(opts.hostname)}`, {
        hostname: opts.hostname,
      });
    }
    args.push('--hostname', opts.hostname);
  }
  for (const file of opts.cgroupProcs ?? []) args.push('--cgroup-procs', absolutePath('cgroupProcs', file));
  if (opts.cgroupProcs && opts.cgroupProcs.length > 16)
    throw new InvalidArgumentError('at most 16 cgroupProcs');
  if (opts.logFile !== undefined) args.push('--log', absolutePath('logFile', opts.logFile));
  if (opts.userns) {
    const { hostUid, count } = opts.userns;
    if (
      !Number.isInteger(hostUid) ||
      hostUid <= 0 ||
      !Number.isInteger(count) ||
      count <= 0 ||
      hostUid + count > 2 ** 32 - 1
    ) {
      throw new InvalidArgumentError('userns wants a positive integer hostUid and count', { hostUid, count });
    }
    args.push('--userns-map', `${hostUid}:${count}`);
  }
  if (opts.overlay) {
    const { lower, upper, work } = opts.overlay;
    args.push(
      '--overlay',
      [
        absolutePath('lower', lower, ':,'),
        absolutePath('upper', upper, ':,'),
        absolutePath('work', work, ':,'),
      ].join(':'),
    );
  }
  const net = opts.net ?? 'none';
  if (!['none', 'new', 'host'].includes(net)) throw new InvalidArgumentError(`invalid net mode: ${net}`);
  args.push('--net', net);
  if (opts.syncFifo !== undefined) args.push('--sync-fifo', absolutePath('syncFifo', opts.syncFifo));
  if (opts.syncTimeoutMs !== undefined) {
    const ms = opts.syncTimeoutMs;
    if (!Number.isInteger(ms) || ms < 1 || ms > 3_600_000)
      throw new InvalidArgumentError(`invalid syncTimeoutMs: ${ms}`);
    // Only when asked: a helper built before the option refuses it, and its own default is the same.
    args.push('--sync-timeout-ms', String(ms));
  }
  const init = opts.init ?? ['/sbin/init'];
  if (init.length === 0 || !init[0].startsWith('/') || init.some((a) => a.includes('\0'))) {
    throw new InvalidArgumentError('init must start with an absolute program path', { init });
  }
  args.push('--', ...init);
  return args;
}

interface HelperOk {
  pid: number;
  startTime: number;
  supervisorPid: number;
  warnings?: string[];
}
interface HelperError {
  error: string;
  errno: number;
  message: string;
}

/**
 * Interprets the helper's one JSON line. Returns the launch result or throws LaunchError
 * (KERNEL_EPERM for EPERM/EACCES, KERNEL_ERROR otherwise), INVALID_ARGUMENT for an `args` error, and
 * KERNEL_ERROR with step `helper` for output that is not the expected line.
 */
export function parseHelperOutput(stdout: string, exitCode: number): LaunchResult {
  const line = stdout.trim().split('\n').pop() ?? '';
  let parsed: unknown;
  try {
    parsed = JSON.parse(line);
  } catch {
    throw new LaunchError('helper', 0, `helper: unreadable output (exit ${exitCode}): ${line.slice(0, 500)}`);
  }
  const obj = parsed as Partial<HelperOk & HelperError>;
  if (typeof obj.error === 'string') {
    if (obj.error === 'args')
      throw new InvalidArgumentError(`berth-launch rejected its arguments: ${obj.message}`);
    throw new LaunchError(obj.error, Number(obj.errno) || 0, String(obj.message ?? obj.error));
  }
  if (
    exitCode !== 0 ||
    !Number.isSafeInteger(obj.pid) ||
    !Number.isSafeInteger(obj.startTime) ||
    !Number.isSafeInteger(obj.supervisorPid)
  ) {
    throw new LaunchError('helper', 0, `helper: unexpected output (exit ${exitCode}): ${line.slice(0, 500)}`);
  }
  return {
    pid: obj.pid as number,
    startTime: obj.startTime as number,
    supervisorPid: obj.supervisorPid as number,
    warnings: Array.isArray(obj.warnings) ? obj.warnings.map(String) : [],
  };
}

/**
 * Starts a container through berth-launch: cgroups joined first, namespaces unshared, rootfs pivoted,
 * init exec'd under a detached per-container supervisor. Resolves once init runs (or, with syncFifo,
 * once it waits on the FIFO) with init's host pid and start time; the container keeps running when this
 * process exits. Throws LaunchError (KERNEL_EPERM / KERNEL_ERROR, with `step` and `errno`), validation
 * errors, DependencyMissingError when the helper was not built, TIMEOUT-like COMMAND_FAILED when the
 * helper hangs. A failed start leaves no process behind.
 */
export async function launchContainer(opts: LaunchOptions): Promise<LaunchResult> {
  const args = buildLaunchArgs(opts);
  const helper = helperPath(opts.helper);
  const result = await run(helper, args, {
    okCodes: [0, 1, 2],
    timeoutMs: opts.timeoutMs ?? 10_000,
    env: { ...INIT_ENV },
  });
  return parseHelperOutput(result.stdout, result.code);
}
