import { run } from './exec';
import { CommandFailedError, DependencyMissingError } from './errors';

describe('run', () => {
  it('passes arguments without a shell and returns stdout', async () => {
    const r = await run('printf', ['%s|', 'a b', '$(id)']);
    expect(r.stdout).toBe('a b|$(id)|');
  });
  it('throws CommandFailedError with the exit code', async () => {
    await expect(run('sh', ['-c', 'echo boom >&2; exit 3'])).rejects.toMatchObject({
      code: 'COMMAND_FAILED',
      exitCode: 3,
    });
    await expect(run('false', [])).rejects.toBeInstanceOf(CommandFailedError);
  });
  it('reports a missing program as DEPENDENCY_MISSING', async () => {
    await expect(run('berth-no-such-program', [])).rejects.toBeInstanceOf(DependencyMissingError);
  });
});
