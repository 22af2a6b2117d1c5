import type { JobHandler } from '../job-context';

/**
 * A restart is two recorded steps, each idempotent on its own (a stop of a stopped container and a start
 * of a running one change nothing): a run again after a crash, or after its end was lost, resumes after
 * the last one recorded instead of restarting the container a second time.
 */
export const containerRestartJob: JobHandler<'container.restart'> = {
  kind: 'container.restart',
  async run({ payload, runtime, step, progress }) {
    const id = payload.containerId;
    await step('stop', () => runtime.containers.stop(id));
    progress('start', 50);
    const r = await step('start', () => runtime.containers.start(id));
    // The start reports the container as it left it; when an earlier attempt did it, it is looked up.
    const info = r?.info ?? (await runtime.containers.get(id));
    return {
      result: { status: info.status, changed: r?.changed ?? false, initPid: info.init?.pid ?? null },
      container: info,
    };
  },
};
