/**
 * Entry point of the operator CLI: `npm run runtime -- <command> …` (see `runCli` for the commands and
 * exit codes). Flags, with the worker's `BERTH_*` runtime settings from the environment as their defaults.
 */
import { ConfigError } from '@berth/config/config';
import { runtimeEnv } from '@berth/config/runtime-env';
import { runCli } from './cli.program';

let env: ReturnType<typeof runtimeEnv> | undefined;
try {
  env = runtimeEnv();
} catch (e) {
  // A setting the worker would refuse too: said as a usage error, nothing opened.
  process.stderr.write(`error: USAGE: ${e instanceof ConfigError ? e.message : String(e)}\n`);
  process.exitCode = 2;
}
if (env)
  void runCli(
    process.argv.slice(2),
    {
      stdout: (text) => process.stdout.write(text),
      stderr: (text) => process.stderr.write(text),
    },
    undefined,
    env,
  ).then((code) => {
    // exitCode (not process.exit) so buffered output on pipes is flushed before the process ends.
    process.exitCode = code;
  });
