import type { JobHandler } from '../job-context';
import { SETTLED_STATES } from '../job-store';
import { markContainerAfterFailure } from '../shared/container-sync';

/** Clone the template, create the cgroup and record (step `create`), then optionally start (step `start`). */
export const containerCreateJob: JobHandler<'container.create'> = {
  kind: 'container.create',
  async run({ payload: p, runtime, step, progress }) {
    progress('create', 10);
    const created = await step('create', () =>
      runtime.containers.create({
        id: p.containerId,
        hostname: p.name,
        template: p.template,
        resources: p.resources,
        network: { mode: p.network.mode },
        privileged: p.privileged,
      }),
    );
    let last = created;
    if (p.start) {
      progress('start', 60);
      last = await step('start', () => runtime.containers.start(p.containerId));
    }
    // The last operation reports the container as it left it; a step an earlier attempt did is looked up.
    const info = last?.info ?? (await runtime.containers.get(p.containerId));
    return {
      result: { status: info.status, initPid: info.init?.pid ?? null, ipAddress: info.ipAddress },
      container: info,
    };
  },
  async onFailed({ payload, runtime }, m, error) {
    // A create that ran to its end but whose end PostgreSQL refused (END_NOT_RECORDED) made the container:
    // the row says what the runtime has. Any other failure leaves a container never fully made: `error`.
    const status =
      error.code === 'END_NOT_RECORDED'
        ? await runtime.containers.get(payload.containerId).then(
            (i) => i.status,
            () => 'error',
          )
        : 'error';
    await markContainerAfterFailure(
      m,
      payload.containerId,
      SETTLED_STATES.includes(status) ? status : 'error',
      error.code,
    );
  },
};
