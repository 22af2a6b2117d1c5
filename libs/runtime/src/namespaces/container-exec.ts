import { run } from '../common/exec';
import { CommandFailedError, InvalidArgumentError, RuntimeError } from '../common/errors';
import { InitRef, isAlive } from './init-process';
import { INIT_ENV } from './launcher';

export interface ExecOptions {
  /** Bytes written to the command's stdin (then closed). */
  input?: string | Buffer;
  /** Kill the command (and everything in its process group) after this many ms; throws TIMEOUT. */
  timeoutMs?: number;
  /** Also enter the container's user namespace, so the command runs as container root (uid 0 inside). */
  userns?: boolean;
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

/**
 * Runs argv inside the running container (its mount, UTS, IPC, network and pid namespaces, its root and
 * working directory) through util-linux nsenter, spawned with an argument array. Any exit code of the
 * command resolves (it is the caller's to judge). Throws WRONG_STATE when init is not running,
 * TIMEOUT after timeoutMs, DependencyMissingError when nsenter/timeout are absent.
 */
export async function execInContainer(
  ref: InitRef,
  argv: readonly string[],
  options: ExecOptions = {},
): Promise<ExecResult> {
  const nsenterArgs = buildNsenterArgs(ref.pid, argv, options.userns ?? false);
  if (!(await isAlive(ref))) {
    throw new RuntimeError('WRONG_STATE', 'the container is not running', { pid: ref.pid, argv });
  }
  const okCodes = Array.from({ length: 256 }, (_, i) => i);
  const env = { ...INIT_ENV, HOME: '/root' };
  if (!options.timeoutMs) {
    const r = await run('nsenter', nsenterArgs, { input: options.input, okCodes, env });
    return { code: r.code, stdout: r.stdout, stderr: r.stderr };
  }
  // coreutils timeout kills its whole process group: nsenter *and* the child it forked into the pid
  // namespace (killing nsenter alone would leave the command running in the container)
  const seconds = (options.timeoutMs / 1000).toFixed(3);
  const started = Date.now();
  try {
    const r = await run('timeout', ['--signal=KILL', seconds, 'nsenter', ...nsenterArgs], {
      input: options.input,
      okCodes,
      env,
      timeoutMs: options.timeoutMs + 2000,
    });
    return { code: r.code, stdout: r.stdout, stderr: r.stderr };
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
