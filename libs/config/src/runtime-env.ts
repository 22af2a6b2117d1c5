import { ConfigError } from './config';
import { envShape } from './config.schema';

/** The runtime's settings a host's worker reads, which the runtime CLI takes as its flags' defaults. */
const RUNTIME_VARIABLES = [
  'BERTH_DATA_ROOT',
  'BERTH_CGROUP_PARENT',
  'BERTH_STORAGE_DRIVER',
  'BERTH_BRIDGE',
  'BERTH_BRIDGE_CIDR',
  'BERTH_HOST_NETNS',
] as const;

export type RuntimeVariable = (typeof RUNTIME_VARIABLES)[number];

const runtimeSchema = envShape.pick({
  BERTH_DATA_ROOT: true,
  BERTH_CGROUP_PARENT: true,
  BERTH_STORAGE_DRIVER: true,
  BERTH_BRIDGE: true,
  BERTH_BRIDGE_CIDR: true,
  BERTH_HOST_NETNS: true,
});

/**
 * The runtime settings set in `env`, checked as the worker checks them (ConfigError otherwise), and only
 * those set: an unset one leaves the CLI's own default (the worker's, but for the bridge's address pool,
 * which the CLI takes only when given: it turns bridge networking on). Without Nest (the runtime CLI is
 * framework-free): import it as `@berth/config/runtime-env`.
 */
export function runtimeEnv(env: NodeJS.ProcessEnv = process.env): Partial<Record<RuntimeVariable, string>> {
  const set = RUNTIME_VARIABLES.filter((k) => env[k] !== undefined && env[k] !== '');
  const parsed = runtimeSchema.safeParse(Object.fromEntries(set.map((k) => [k, env[k]])));
  if (!parsed.success)
    throw new ConfigError(
      parsed.error.issues.map((i) => ({ variable: String(i.path[0] ?? '?'), message: i.message })),
    );
  return Object.fromEntries(set.map((k) => [k, String(parsed.data[k])]));
}
