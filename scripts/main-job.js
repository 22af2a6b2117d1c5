#!/usr/bin/env node
// The README's first command ends here: through the API, wait for this host's worker, import the default
// busybox template on this host, then create and start one container, and print how to watch it.
// Idempotent: a second run finds the template ready and the container, starts it if it is stopped (after a
// reboot) or resumes it if it is paused, and fails loudly if it is broken.
'use strict';
const { readFileSync } = require('node:fs');

const base = process.argv[2];
const keyFile = process.argv[3];
const name = process.argv[4] || 'hello';
const hostName = process.argv[5];
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

/** This host, once its worker has registered it and heartbeats (the API may be up first). */
async function waitForHost() {
  const deadline = Date.now() + 120_000;
  for (;;) {
    const host = (await call('GET', '/v1/hosts')).find((h) => h.name === hostName);
    if (host && host.state === 'online') return host;
    if (Date.now() > deadline)
      throw new Error(`host ${hostName} is not online after 2 minutes: see the worker's log`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

/**
 * The main job's own container `name`: one of no tenant. The admin key lists every tenant's containers, and
 * a tenant's of the same name (stopped, e.g. for non-payment) is never the main job's to start; the list
 * cannot filter "no tenant", so every page is read.
 */
async function ownContainer(name) {
  let cursor = null;
  do {
    const page = await call(
      'GET',
      `/v1/containers?name=${encodeURIComponent(name)}&limit=200${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`,
    );
    const own = page.items.find((c) => c.tenantId === null);
    if (own) return own;
    cursor = page.nextCursor;
  } while (cursor);
  return undefined;
}

(async () => {
  const host = await waitForHost();
  const ready = (await call('GET', '/v1/templates')).find(
    (t) => t.name === 'busybox' && t.replicas.some((r) => r.hostId === host.id && r.state === 'ready'),
  );
  if (!ready) {
    // No Idempotency-Key: a second import of a template is a no-op in the database, and a key would
    // replay a failed import's answer instead of trying again.
    const tpl = await call('POST', '/v1/templates', {
      name: 'busybox',
      source: 'builtin:busybox',
      host: host.id,
    });
    for (const j of tpl.jobs) {
      const done = await waitJob(j.id);
      if (done.state !== 'completed')
        throw new Error(`template import ${j.id} ${done.state}: ${JSON.stringify(done.error)}`);
    }
  }
  console.log(`template busybox: ${ready ? 'already' : 'imported and'} ready on ${hostName}`);
  const existing = await ownContainer(name);
  let jobId;
  let containerId = existing && existing.id;
  if (existing) {
    console.log(`container ${name} (${existing.id}) exists: ${existing.state}`);
    jobId = existing.lastJobId;
    // The main job is a running container: a stopped one (after a reboot: the worker records what it finds
    // on the host when it starts) is started, a paused one resumed.
    const again = { stopped: 'start', paused: 'resume' }[existing.state];
    if (again && existing.targetState === existing.state) {
      const r = await call('POST', `/v1/containers/${existing.id}/${again}`, {});
      jobId = r.job.id;
      const done = await waitJob(jobId);
      console.log(`  ${again} job ${done.state}: ${JSON.stringify(done.result || done.error)}`);
      if (done.state !== 'completed') process.exitCode = 1;
    } else if (existing.state !== 'running' && existing.targetState !== 'running') {
      console.error(
        `  ${name} is ${existing.state} (target ${existing.targetState}): destroy it (DELETE /v1/containers/${existing.id}) and run again`,
      );
      process.exitCode = 1;
    }
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
  console.log(`  curl -s -H "Authorization: Bearer $(cat ${keyFile})" '${base}/v1/containers?name=${name}'`);
  // The worker's data root and cgroup parent when they are not the defaults (the CLI reads them from the
  // environment too, but the line may be pasted into another shell).
  const where = [
    ['--data-root', process.env.BERTH_DATA_ROOT, '/var/lib/berth'],
    ['--cgroup-parent', process.env.BERTH_CGROUP_PARENT, 'berth'],
  ]
    .filter(([, v, d]) => v && v !== d)
    .map(([flag, v]) => `${flag} '${v}' `)
    .join('');
  console.log(`  npm run runtime -- ${where}exec ${containerId} -- ps   # on this host, as root`);
  console.log(`  ${base}/admin/queues   # queue board: basic auth, any user, the admin key as password`);
  console.log(`  curl -s -H "Authorization: Bearer $(cat ${keyFile})" ${base}/metrics`);
})().catch((e) => {
  console.error(`main job failed: ${e.message}`);
  process.exit(1);
});
