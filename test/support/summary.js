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
const failed = r.numFailedTests + r.numRuntimeErrorTestSuites;
const skipped = r.numPendingTests + r.numTodoTests;
let line = `${r.numPassedTests} passed, ${failed} failed`;
if (skipped > 0) line += `, ${skipped} skipped`;
process.stdout.write(`${line}\n`);
process.exit(failed > 0 || r.numTotalTests === 0 ? 1 : 0);
