import { run } from '../common/exec';
import { CommandFailedError, InvalidArgumentError, RuntimeError } from '../common/errors';
import { InitRef, isAlive } from './init-process';
import { helperPath, INIT_ENV } from './launcher';

export interface ExecOptions {
  /** Bytes written to the command's stdin (then closed). */
  input?: string | Buffer;
  /** Kill the command (and everything in its process group) after this many ms; throws TIMEOUT. */
  timeoutMs?: number;
  /** Also enter the container's user namespace, so the command runs as container root (uid 0 inside). */
  userns?: boolean;
  /**
   * cgroup.procs files of the container (CgroupDriver.procsFiles): the command joins them before it
   * enters the namespaces, so it and everything it forks count against the container's limits. When
   * given, the berth-launch helper runs the command (`berth-launch exec`) instead of nsenter, which would
   * leave it in the caller's cgroup.
   */
  cgroupProcs?: readonly string[];
  /** berth-launch binary to use instead of helperPath() (with cgroupProcs only). */
  helper?: string;
}

export interface ExecResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** nsenter's argument array for running argv inside the container of `pid` (pure: unit-tested). */
export function buildNsenterArgs(pid: number, argv: readonly string[], userns: boolean): string[] {
  if (!Number.isSafeInteger(pid) || pid <= 1) throw new InvalidArgumentError('invalid init pid', { pid });
  if (argv.length === 0 || argv.some((a) => a.includes('\0'))) {
    throw new InvalidArgumentError('exec wants a non-empty argument array without NUL bytes');
  }
  const args = ['--target', String(pid)];
  // the user namespace comes first so the others are entered with the container's privileges
  if (userns) args.push('--user');
  args.push('--mount', '--uts', '--ipc', '--net', '--pid', '--root', '--wd', '--', ...argv);
  return args;
}

/** Exit code of `berth-launch exec` when the helper itself failed (before the command ran). */
export const EXEC_HELPER_FAILED = 125;

/**
 * `berth-launch exec` argument array for running argv inside the container of `pid`, joined to the
 * container's cgroups first (pure: unit-tested). Throws INVALID_ARGUMENT / INVALID_PATH for bad input.
 */
export function buildExecHelperArgs(
  pid: number,
  argv: readonly string[],
  userns: boolean,
  cgroupProcs: readonly string[],
): string[] {
  // same checks as nsenter's arguments
  buildNsenterArgs(pid, argv, userns);
  if (cgroupProcs.length > 16) throw new InvalidArgumentError('at most 16 cgroupProcs');
  const args = ['exec', '--target', String(pid)];
  if (userns) args.push('--userns');
  for (const file of cgroupProcs) {
    if (!file.startsWith('/') || file.includes('\0')) {
      throw new RuntimeError('INVALID_PATH', 'cgroupProcs must be absolute paths', { file });
    }
    args.push('--cgroup-procs', file);
  }
  args.push('--', ...argv);
  return args;
}

/**
 * Runs argv inside the running container (its mount, UTS, IPC, network and pid namespaces, its root and
 * working directory), spawned with an argument array: through `berth-launch exec` when `cgroupProcs` is
 * given (the command joins the container's cgroups first), else through util-linux nsenter (the command
 * stays in the caller's cgroup). Any exit code of the command resolves (it is the caller's to judge; a
 * command killed by a signal is reported as 128 + signal by the helper). Throws WRONG_STATE when init is
 * not running, TIMEOUT after timeoutMs, KERNEL_EPERM / KERNEL_ERROR when the helper could not enter the
 * container, DependencyMissingError when nsenter/timeout/the helper are absent.
 */
export async function execInContainer(
  ref: InitRef,
  argv: readonly string[],
  options: ExecOptions = {},
): Promise<ExecResult> {
  const userns = options.userns ?? false;
  const viaHelper = options.cgroupProcs !== undefined && options.cgroupProcs.length > 0;
  const [program, programArgs] = viaHelper
    ? [helperPath(options.helper), buildExecHelperArgs(ref.pid, argv, userns, options.cgroupProcs ?? [])]
    : ['nsenter', buildNsenterArgs(ref.pid, argv, userns)];
  if (!(await isAlive(ref))) {
    throw new RuntimeError('WRONG_STATE', 'the container is not running', { pid: ref.pid, argv });
  }
  const okCodes = Array.from({ length: 256 }, (_, i) => i);
  const env = { ...INIT_ENV, HOME: '/root' };
  if (!options.timeoutMs) {
    const r = await run(program, programArgs, { input: options.input, okCodes, env });
    return viaHelper ? checkHelper(r, ref, argv) : { code: r.code, stdout: r.stdout, stderr: r.stderr };
  }
  // coreutils timeout kills its whole process group (itself included, so the run ends with SIGKILL):
  // nsenter or the helper *and* the child it forked into the pid namespace (killing the parent alone
  // would leave the command running in the container)
  const seconds = (options.timeoutMs / 1000).toFixed(3);
  const started = Date.now();
  try {
    const r = await run('timeout', ['--signal=KILL', seconds, program, ...programArgs], {
      input: options.input,
      okCodes,
      env,
      timeoutMs: options.timeoutMs + 2000,
    });
    return viaHelper ? checkHelper(r, ref, argv) : { code: r.code, stdout: r.stdout, stderr: r.stderr };
  } catch (e) {
    if (
      e instanceof CommandFailedError &&
      e.signal === 'SIGKILL' &&
      Date.now() - started >= options.timeoutMs
    ) {
      throw new RuntimeError('TIMEOUT', `exec in container timed out after ${options.timeoutMs} ms`, {
        pid: ref.pid,
        argv,
      });
    }
    throw e;
  }
}

/** Turns a failure of the exec helper itself (exit 125 + `berth-exec:` on stderr) into a typed error. */
function checkHelper(r: ExecResult, ref: InitRef, argv: readonly string[]): ExecResult {
  const line = r.stderr.split('\n').find((l) => l.startsWith('berth-exec: ')) ?? '';
  if (r.code === EXEC_HELPER_FAILED && line) {
    const eperm = /Operation not permitted|Permission denied/.test(line);
    throw new RuntimeError(eperm ? 'KERNEL_EPERM' : 'KERNEL_ERROR', `exec in container failed: ${line}`, {
      pid: ref.pid,
      argv,
    });
  }
  return { code: r.code, stdout: r.stdout, stderr: r.stderr };
}
