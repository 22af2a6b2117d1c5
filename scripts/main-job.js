#!/usr/bin/env node
// The README's first command ends here: through the API, import the default busybox template on every
// host, then create and start one container, and print how to watch it. Idempotent: a second run finds
// the template and the container and reports them.
'use strict';
const { readFileSync } = require('node:fs');

const base = process.argv[2];
const keyFile = process.argv[3];
const name = process.argv[4] || 'hello';
const token = readFileSync(keyFile, 'utf8').trim();
const headers = { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' };

async function call(method, path, body, extra = {}) {
  const res = await fetch(`${base}${path}`, {
    method,
    headers: { ...headers, ...extra },
    body: body && JSON.stringify(body),
  });
  const json = await res.json().catch(() => null);
  if (res.status >= 400)
    throw new Error(`${method} ${path}: ${res.status} ${json && json.code + ': ' + json.detail}`);
  return json;
}

async function waitJob(id) {
  for (;;) {
    const job = await call('GET', `/v1/jobs/${id}/wait?timeout=30`);
    if (['completed', 'failed', 'cancelled'].includes(job.state)) return job;
    if (job.waitingReason) console.log(`  ${job.waitingReason}`);
  }
}

(async () => {
  const tpl = await call(
    'POST',
    '/v1/templates',
    { name: 'busybox', source: 'builtin:busybox' },
    {
      'Idempotency-Key': `up-template-busybox-${new Date().toISOString().slice(0, 10)}`,
    },
  );
  for (const j of tpl.jobs) {
    const done = await waitJob(j.id);
    if (done.state !== 'completed')
      throw new Error(`template import ${j.id} ${done.state}: ${JSON.stringify(done.error)}`);
  }
  console.log(`template busybox: ready`);
  const existing = (await call('GET', `/v1/containers?name=${name}`)).items[0];
  let jobId;
  let containerId = existing && existing.id;
  if (existing) {
    console.log(`container ${name} (${existing.id}) exists: ${existing.state}`);
    jobId = existing.lastJobId;
  } else {
    const r = await call('POST', '/v1/containers', {
      name,
      template: 'busybox',
      cpus: 1,
      memoryBytes: 256 * 1024 * 1024,
      pidsMax: 256,
    });
    jobId = r.job.id;
    containerId = r.container.id;
    console.log(`container ${name} (${r.container.id}): create job ${jobId} accepted`);
    const done = await waitJob(jobId);
    console.log(`  job ${done.state}: ${JSON.stringify(done.result || done.error)}`);
    if (done.state !== 'completed') process.exitCode = 1;
  }
  console.log('\nWatch it:');
  console.log(`  curl -s -H "Authorization: Bearer $(cat ${keyFile})" ${base}/v1/jobs/${jobId}/wait`);
  console.log(`  curl -s -H "Authorization: Bearer $(cat ${keyFile})" ${base}/v1/containers?name=${name}`);
  console.log(`  npm run runtime -- exec ${containerId} -- ps   # on this host, as root`);
  console.log(`  ${base}/admin/queues   # queue board: basic auth, any user, the admin key as password`);
  console.log(`  curl -s -H "Authorization: Bearer $(cat ${keyFile})" ${base}/metrics`);
})().catch((e) => {
  console.error(`main job failed: ${e.message}`);
  process.exit(1);
});
