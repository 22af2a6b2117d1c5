/**
 * Entry point of the operator CLI: `npm run runtime -- <command> …` (see `runCli` for the commands and
 * exit codes). Everything comes from flags; nothing is read from the environment.
 */
import { runCli } from './cli.program';

void runCli(process.argv.slice(2), {
  stdout: (text) => process.stdout.write(text),
  stderr: (text) => process.stderr.write(text),
}).then((code) => {
  // exitCode (not process.exit) so buffered output on pipes is flushed before the process ends.
  process.exitCode = code;
});
