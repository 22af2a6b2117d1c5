#!/usr/bin/env node
// Reads jest's --json results and prints the one plain summary line for the whole run (the last line of
// the test command). A suite that failed to load counts as a failure: it hides tests that never ran.
const fs = require('node:fs');
const file = process.argv[2];
let r;
try {
  r = JSON.parse(fs.readFileSync(file, 'utf8'));
} catch (e) {
  process.stdout.write(`jest produced no results (${e.message})\n0 passed, 1 failed\n`);
  process.exit(1);
}
let failed = r.numFailedTests + r.numRuntimeErrorTestSuites;
// A suite that failed with no failing test of its own (an afterAll hook that threw): one failure.
if (failed === 0 && !r.success && r.numFailedTestSuites > 0) failed = r.numFailedTestSuites;
const skipped = r.numPendingTests + r.numTodoTests;
// In CI a skip hides what did not run (kernel tests fail there instead of skipping): the run fails.
const skipFails = process.env.CI === 'true' && skipped > 0;
if (skipFails) process.stdout.write(`CI=true: ${skipped} test(s) skipped, which fails the run in CI\n`);
let line = `${r.numPassedTests} passed, ${failed} failed`;
if (skipped > 0) line += `, ${skipped} skipped`;
process.stdout.write(`${line}\n`);
process.exit(failed > 0 || skipFails || r.numTotalTests === 0 ? 1 : 0);
