import type { JobKind } from '@berth/jobs';
import type { HostRuntime, OperationResult } from '@berth/runtime';
import type { JobHandler } from '../job-context';

type SimpleKind = Extract<
  JobKind,
  'container.start' | 'container.stop' | 'container.pause' | 'container.resume'
>;

/** A one-step container operation whose result is the container's new runtime state. */
export function lifecycleJob<K extends SimpleKind>(
  kind: K,
  op: (rt: HostRuntime, id: string, payload: { timeoutMs?: number }) => Promise<OperationResult>,
): JobHandler<K> {
  return {
    kind,
    async run({ payload, runtime, step }) {
      const r = await step(kind.split('.')[1], () =>
        op(runtime, payload.containerId, payload as { timeoutMs?: number }),
      );
      // The operation reports the container as it left it; a step an earlier attempt did is looked up.
      const info = r?.info ?? (await runtime.containers.get(payload.containerId));
      return {
        result: { status: info.status, changed: r?.changed ?? false, initPid: info.init?.pid ?? null },
        container: info,
      };
    },
  };
}
