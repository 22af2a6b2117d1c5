/**
 * Typed runtime errors. Every error carries a stable `code` (API clients and job records depend on it) and
 * the context that explains it. Libraries never throw HTTP errors: apps/api maps codes to problem+json.
 */
export type RuntimeErrorCode =
  | 'INVALID_ARGUMENT'
  | 'INVALID_NAME'
  | 'INVALID_SIZE'
  | 'INVALID_PATH'
  | 'NOT_FOUND'
  | 'CONTAINER_NOT_FOUND'
  | 'CONTAINER_EXISTS'
  | 'TEMPLATE_NOT_FOUND'
  | 'TEMPLATE_EXISTS'
  | 'SNAPSHOT_NOT_FOUND'
  | 'SNAPSHOT_EXISTS'
  | 'VOLUME_NOT_FOUND'
  | 'VOLUME_EXISTS'
  | 'TEMPLATE_IN_USE'
  | 'WRONG_STATE'
  | 'UNSAFE_ARCHIVE'
  | 'NO_SPACE'
  | 'INVALID_TEMPLATE'
  | 'UNSUPPORTED'
  | 'DEPENDENCY_MISSING'
  | 'KERNEL_EPERM'
  | 'KERNEL_ERROR'
  | 'COMMAND_FAILED'
  | 'TIMEOUT'
  | 'NO_ADDRESS'
  | 'ADDRESS_IN_USE'
  | 'CGROUP_NOT_FOUND'
  | 'CGROUP_BUSY'
  | 'CGROUP_LIMIT_REJECTED';

export class RuntimeError extends Error {
  constructor(
    readonly code: RuntimeErrorCode,
    message: string,
    readonly context: Record<string, unknown> = {},
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = new.target.name;
  }

  /** Permanent errors are the caller's fault or a fact of the host: retrying the same call cannot help. */
  get permanent(): boolean {
    return !['KERNEL_ERROR', 'COMMAND_FAILED', 'TIMEOUT'].includes(this.code);
  }
}

export class InvalidArgumentError extends RuntimeError {
  constructor(message: string, context: Record<string, unknown> = {}) {
    super('INVALID_ARGUMENT', message, context);
  }
}

export class NotFoundError extends RuntimeError {}

export class CommandFailedError extends RuntimeError {
  constructor(
    readonly command: string,
    readonly args: readonly string[],
    readonly exitCode: number | null,
    readonly stderr: string,
    readonly signal: NodeJS.Signals | null = null,
  ) {
    super(
      /operation not permitted|permission denied/i.test(stderr) ? 'KERNEL_EPERM' : 'COMMAND_FAILED',
      `${command} ${args.join(' ')} failed (${signal ?? `exit ${exitCode}`}): ${stderr.trim().slice(0, 2000)}`,
      { command, args, exitCode, signal },
    );
  }
}

export class DependencyMissingError extends RuntimeError {
  constructor(program: string, hint: string) {
    super('DEPENDENCY_MISSING', `${program} is not installed: ${hint}`, { program });
  }
}
