import type { JobKind } from '@berth/jobs';
import type { HostRuntime } from '@berth/runtime';
import type { JobHandler } from '../job-context';

type SimpleKind = Extract<
  JobKind,
  'container.start' | 'container.stop' | 'container.restart' | 'container.pause' | 'container.resume'
>;

/** A one-step container operation whose result is the container's new runtime state. */
export function lifecycleJob<K extends SimpleKind>(
  kind: K,
  op: (rt: HostRuntime, id: string, payload: { timeoutMs?: number }) => Promise<{ changed: boolean }>,
): JobHandler<K> {
  return {
    kind,
    async run({ payload, runtime, step }) {
      const r = await step(kind.split('.')[1], () =>
        op(runtime, payload.containerId, payload as { timeoutMs?: number }),
      );
      const info = await runtime.containers.get(payload.containerId);
      return {
        result: { status: info.status, changed: r?.changed ?? false, initPid: info.init?.pid ?? null },
        container: info,
      };
    },
  };
}
