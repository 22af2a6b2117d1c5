/**
 * Entry point of the operator CLI: `npm run runtime -- <command> …` (see `runCli` for the commands and
 * exit codes). Flags, with the worker's `BERTH_*` runtime settings from the environment as their defaults.
 */
import { runCli } from './cli.program';

void runCli(
  process.argv.slice(2),
  {
    stdout: (text) => process.stdout.write(text),
    stderr: (text) => process.stderr.write(text),
  },
  undefined,
  // The one place the framework-free runtime reads its environment (@berth/config is the apps' and
  // brings Nest): the defaults of the runtime flags, each checked as the flag would be.
  // eslint-disable-next-line no-restricted-properties
  process.env,
).then((code) => {
  // exitCode (not process.exit) so buffered output on pipes is flushed before the process ends.
  process.exitCode = code;
});
