import { randomUUID } from 'node:crypto';
import { request as httpRequest, type Server } from 'node:http';
import { connect, type AddressInfo } from 'node:net';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Response } from 'supertest';
import { createDataSource } from '@berth/db';
import { createApiApp } from '../../apps/api/src/bootstrap';
import { ApiKeyService } from '../../apps/api/src/auth/api-key.service';
import { generateApiKey } from '../../apps/api/src/auth/api-keys';
import { createMigratedDatabase, dropDatabase, startApiOnly, type ApiOnly } from '@test/support/api-only';
import { createTestKey } from '@test/support/pipeline';
import { testConfig } from '@test/support/config';
import request from 'supertest';

const MiB = 1024 * 1024;
const TiB = 1024 * 1024 * MiB;
const UNKNOWN = '00000000-0000-4000-8000-000000000000';

type Method = 'get' | 'post' | 'patch' | 'delete';
interface OpenApi {
  paths: Record<string, Record<string, Operation>>;
  components: { schemas: Record<string, { properties: Record<string, unknown>; required?: string[] }> };
}
interface Operation {
  parameters?: { name: string; in: string }[];
  requestBody?: { required?: boolean; content: Record<string, { schema: { $ref?: string } }> };
  responses: Record<
    string,
    {
      content?: Record<string, { schema: { $ref?: string; type?: string; items?: { $ref?: string } } }>;
      headers?: Record<string, unknown>;
    }
  >;
}

function expectProblem(res: Response, status: number, code: string) {
  expect({ status: res.status, code: res.body?.code }).toEqual({ status, code });
  expect(res.headers['content-type']).toMatch(/^application\/problem\+json/);
  expect(res.body).toMatchObject({ type: expect.any(String), title: code, status, code });
  expect(typeof res.body.detail).toBe('string');
}

describe('API edge: OpenAPI, authentication, bad input', () => {
  let a: ApiOnly;
  let containerId: string;

  beforeAll(async () => {
    a = await startApiOnly('edge');
    // One accepted container, for the endpoints that take an existing id.
    const res = await a.createStopped('edge-ok');
    expect(res.status).toBe(202);
    containerId = res.body.container.id;
  }, 60_000);
  afterAll(() => a?.close(), 30_000);

  /** Every authenticated route, with a request that would be valid apart from authentication. */
  const routes = (): [Method, string, object?][] => [
    ['get', '/v1/containers'],
    ['post', '/v1/containers', { name: 'edge-x', template: 'edge-tpl', cpus: 1, memoryBytes: 64 * MiB }],
    ['get', `/v1/containers/${containerId}`],
    ['post', `/v1/containers/${containerId}/start`, {}],
    ['post', `/v1/containers/${containerId}/stop`, {}],
    ['post', `/v1/containers/${containerId}/restart`, {}],
    ['post', `/v1/containers/${containerId}/pause`, {}],
    ['post', `/v1/containers/${containerId}/resume`, {}],
    ['patch', `/v1/containers/${containerId}`, { cpus: 2 }],
    ['post', `/v1/containers/${containerId}/snapshots`, { name: 's1' }],
    ['delete', `/v1/containers/${containerId}`],
    ['get', '/v1/templates'],
    ['post', '/v1/templates', { name: 'edge-t2', source: 'builtin:busybox' }],
    ['get', '/v1/jobs'],
    ['get', `/v1/jobs/${UNKNOWN}`],
    ['get', `/v1/jobs/${UNKNOWN}/wait?timeout=0`],
    ['get', `/v1/jobs/${UNKNOWN}/events`],
    ['post', `/v1/jobs/${UNKNOWN}/retry`, {}],
    ['post', `/v1/jobs/${UNKNOWN}/cancel`, {}],
    ['get', '/v1/hosts'],
    ['post', `/v1/hosts/${UNKNOWN}/drain`, {}],
    ['post', `/v1/hosts/${UNKNOWN}/undrain`, {}],
    ['get', `/v1/audit?subject=${containerId}`],
  ];

  describe('OpenAPI at /docs', () => {
    let doc: OpenApi;
    beforeAll(async () => {
      const res = await a.http().get('/docs/openapi.json');
      expect(res.status).toBe(200);
      doc = res.body;
    });

    it('serves the UI and the document without an API key', async () => {
      const ui = await a.http().get('/docs');
      expect(ui.status).toBe(200);
      expect(ui.text).toContain('swagger');
    });

    it('lists every route the server has', () => {
      const documented = new Set(
        Object.entries(doc.paths).flatMap(([p, ops]) => Object.keys(ops).map((m) => `${m} ${p}`)),
      );
      const expected = routes().map(
        ([m, url]) => `${m} ${url.split('?')[0].replace(containerId, '{id}').replace(UNKNOWN, '{id}')}`,
      );
      for (const r of expected) expect(documented).toContain(r);
      // …and nothing served is left out: the routes Express really has (health included).
      const router = (
        a.api.getHttpAdapter().getInstance() as {
          router: { stack: { route?: { path: string; methods: Record<string, boolean> } }[] };
        }
      ).router;
      const served = router.stack
        // Nest's catch-all not-found route and the docs are not API routes.
        .filter((l) => l.route && !l.route.path.startsWith('/docs') && !l.route.path.includes('splat'))
        .flatMap((l) =>
          Object.keys(l.route!.methods)
            .filter((m) => m !== '_all')
            .map((m) => `${m} ${l.route!.path.replace(/:(\w+)/g, '{$1}')}`),
        );
      expect(served.length).toBeGreaterThanOrEqual(expected.length);
      for (const r of served) expect(documented).toContain(r);
    });

    it("documents each container action's body as it is taken: optional, and timeoutMs for a stop only", () => {
      const body = (action: string) => doc.paths[`/v1/containers/{id}/${action}`].post.requestBody;
      for (const action of ['start', 'restart', 'pause', 'resume']) expect(body(action)).toBeUndefined();
      const stop = body('stop')!;
      expect(stop.required).toBe(false);
      const ref = stop.content['application/json'].schema.$ref!.split('/').pop()!;
      expect(Object.keys(doc.components.schemas[ref].properties)).toEqual(['timeoutMs']);
    });

    it('defines the Problem schema', () => {
      const p = doc.components.schemas.Problem;
      expect(Object.keys(p.properties).sort()).toEqual(
        [
          'code',
          'detail',
          'errors',
          'instance',
          'status',
          'title',
          'type',
          // The extra members some problems carry (NO_CAPACITY, INVALID_TRANSITION, …_NOT_FOUND).
          'reasons',
          'state',
          'targetState',
          'id',
        ].sort(),
      );
      expect(p.required).toEqual(expect.arrayContaining(['type', 'title', 'status', 'code', 'detail']));
    });

    it('lists every code the API answers with in the Problem schema, and each route names its own', () => {
      // The codes in the source: every ApiError and not-found, and the exception filters' own.
      const src = join(__dirname, '../../apps/api/src');
      const files = (readdirSync(src, { recursive: true }) as string[]).filter(
        (f) => f.endsWith('.ts') && !f.endsWith('.spec.ts'),
      );
      const thrown = new Set<string>();
      for (const f of files) {
        const text = readFileSync(join(src, f), 'utf8');
        for (const m of text.matchAll(/new ApiError\(\s*[^,]+,\s*'([A-Z_]+)'/g)) thrown.add(m[1]);
        for (const m of text.matchAll(/notFound\('(\w+)'/g)) thrown.add(`${m[1].toUpperCase()}_NOT_FOUND`);
        if (/problem\.filter|client-error/.test(f)) {
          for (const m of text.matchAll(/(?:^\s+\d{3}: |code: |\? )'([A-Z_]+)'/gm)) thrown.add(m[1]);
          for (const m of text.matchAll(/^\s+([A-Z_]+): HttpStatus\./gm)) thrown.add(m[1]);
        }
      }
      expect(thrown.size).toBeGreaterThan(30);
      const listed = (doc.components.schemas.Problem.properties.code as { enum: string[] }).enum;
      expect([...thrown].filter((c) => !listed.includes(c))).toEqual([]);
      // Each operation's problems name its codes; these once shared one generic description.
      const named = (path: string, method: string, status: string) =>
        (doc.paths[path][method].responses[status] as { description: string }).description;
      const expected: [string, string, string, string[]][] = [
        [
          '/v1/containers',
          'post',
          '409',
          ['CONTAINER_NAME_TAKEN', 'TEMPLATE_NOT_READY', 'IDEMPOTENCY_KEY_IN_FLIGHT'],
        ],
        ['/v1/containers', 'post', '422', ['TEMPLATE_NOT_FOUND', 'HOST_NOT_FOUND', 'EXCEEDS_HOST_CAPACITY']],
        ['/v1/containers', 'post', '503', ['NO_CAPACITY']],
        ['/v1/containers/{id}', 'patch', '409', ['INVALID_TRANSITION', 'CONCURRENT_CHANGE']],
        ['/v1/containers/{id}', 'patch', '422', ['EXCEEDS_HOST_CAPACITY', 'IDEMPOTENCY_KEY_REUSED']],
        ['/v1/containers/{id}/snapshots', 'post', '409', ['SNAPSHOT_EXISTS']],
        ['/v1/templates', 'post', '409', ['TEMPLATE_EXISTS']],
        [
          '/v1/jobs/{id}/retry',
          'post',
          '409',
          ['JOB_NOT_RETRYABLE', 'CONTAINER_DESTROYED', 'INVALID_TRANSITION'],
        ],
        ['/v1/jobs/{id}/cancel', 'post', '409', ['JOB_NOT_CANCELLABLE']],
        ['/v1/hosts/{id}/drain', 'post', '404', ['HOST_NOT_FOUND']],
      ];
      for (const [path, method, status, codes] of expected)
        for (const code of codes)
          expect({ path, method, status, description: named(path, method, status) }).toMatchObject({
            description: expect.stringContaining(`${code}:`),
          });
      // …and no operation names a code for a status it is not answered with.
      expect(named('/v1/containers', 'post', '409')).not.toContain('NO_CAPACITY');
    });

    it('describes the health answers, readiness’s 503 too', () => {
      const paths = doc.paths as Record<string, Record<string, Operation>>;
      expect(Object.keys(paths['/healthz'].get.responses)).toEqual(['200']);
      expect(Object.keys(paths['/readyz'].get.responses).sort()).toEqual(['200', '503']);
      for (const r of [paths['/healthz'].get.responses['200'], paths['/readyz'].get.responses['503']])
        expect(r.content?.['application/json'].schema.type).toBe('object');
    });

    it('documents each write: its answer schema, Location on 202, Idempotency-Key, its problems', () => {
      let writes = 0;
      for (const [path, ops] of Object.entries(doc.paths)) {
        for (const [method, op] of Object.entries(ops)) {
          const where = `${method} ${path}`;
          if (path.startsWith('/v1/')) {
            // Every guarded endpoint documents its 401 as a Problem.
            const unauthorized = op.responses['401']?.content?.['application/problem+json'];
            expect({ where, ref: unauthorized?.schema.$ref }).toEqual({
              where,
              ref: '#/components/schemas/Problem',
            });
          }
          if (!['post', 'patch', 'delete'].includes(method)) continue;
          writes++;
          const okStatus = op.responses['202'] ? '202' : '200';
          const ok = op.responses[okStatus];
          expect({ where, schema: ok?.content?.['application/json']?.schema.$ref }).toEqual({
            where,
            schema: expect.stringMatching(/^#\/components\/schemas\/\w+Dto$/),
          });
          if (okStatus === '202') expect({ where, headers: ok.headers }).toHaveProperty('headers.Location');
          expect({ where, header: op.parameters?.find((x) => x.name === 'Idempotency-Key')?.in }).toEqual({
            where,
            header: 'header',
          });
          for (const status of ['400', '401', '409', '413', '422']) {
            expect({
              where,
              status,
              ref: op.responses[status]?.content?.['application/problem+json']?.schema.$ref,
            }).toEqual({
              where,
              status,
              ref: '#/components/schemas/Problem',
            });
          }
        }
      }
      expect(writes).toBe(14);
      // The writes that create jobs answer 202.
      expect(Object.keys(doc.paths['/v1/containers'].post.responses)).toContain('202');
      expect(Object.keys(doc.paths['/v1/containers/{id}'].delete.responses)).toEqual(
        expect.arrayContaining(['202', '404']),
      );
      expect(Object.keys(doc.paths['/v1/containers'].post.responses)).toContain('503');
      expect(Object.keys(doc.paths['/v1/containers/{id}'].patch.responses)).toContain('503');
    });

    it('describes containers, jobs with events, templates, hosts and audit events', () => {
      const s = doc.components.schemas;
      expect(Object.keys(s.ContainerDto.properties)).toEqual(
        expect.arrayContaining(['id', 'name', 'state', 'targetState', 'resources', 'hostId']),
      );
      expect(Object.keys(s.JobWithEventsDto.properties)).toEqual(
        expect.arrayContaining(['id', 'kind', 'state', 'error', 'progress', 'events']),
      );
      expect(Object.keys(s.ContainerAcceptedDto.properties).sort()).toEqual(['container', 'job']);
      for (const name of [
        'JobEventDto',
        'JobPageDto',
        'ContainerPageDto',
        'TemplateDto',
        'HostDto',
        'AuditEventDto',
      ]) {
        expect(s[name]).toBeDefined();
      }
      const jobGet = doc.paths['/v1/jobs/{id}'].get.responses['200'].content!['application/json'].schema;
      expect(jobGet.$ref).toBe('#/components/schemas/JobWithEventsDto');
      const hosts = doc.paths['/v1/hosts'].get.responses['200'].content!['application/json'].schema;
      expect(hosts).toMatchObject({ type: 'array', items: { $ref: '#/components/schemas/HostDto' } });
    });
  });

  describe('authentication', () => {
    const send = (method: Method, url: string, body: object | undefined, headers: Record<string, string>) => {
      const r = a.http()[method](url).set(headers);
      return body ? r.send(body) : r;
    };

    it('answers health, readiness and docs without a key', async () => {
      expect((await a.http().get('/healthz')).status).toBe(200);
      expect((await a.http().get('/readyz')).status).toBe(200);
      expect((await a.http().get('/docs/openapi.json')).status).toBe(200);
    });

    it('answers 401 problem+json on every other endpoint: no key, malformed key, wrong secret, revoked key', async () => {
      const real = generateApiKey();
      const wrongSecret = generateApiKey();
      await a.ds.query(
        `INSERT INTO api_keys (name, prefix, secret_hash, scopes) VALUES ('real', $1, $2, '{admin}')`,
        [real.prefix, real.secretHash],
      );
      const revoked = generateApiKey();
      await a.ds.query(
        `INSERT INTO api_keys (name, prefix, secret_hash, scopes, revoked_at) VALUES ('revoked', $1, $2, '{admin}', now())`,
        [revoked.prefix, revoked.secretHash],
      );
      const before = await a.counts();
      const variants: [string, Record<string, string>][] = [
        ['no key', {}],
        ['not bearer', { Authorization: `Basic ${Buffer.from('a:b').toString('base64')}` }],
        ['malformed key', { Authorization: 'Bearer berth_nothex_short' }],
        ['empty bearer', { Authorization: 'Bearer ' }],
        // The real key's prefix with another key's secret.
        [
          'wrong secret',
          { Authorization: `Bearer ${real.token.replace(/_[^_]+$/, wrongSecret.token.slice(20))}` },
        ],
        ['unknown prefix', { Authorization: `Bearer ${wrongSecret.token}` }],
        ['revoked key', { Authorization: `Bearer ${revoked.token}` }],
      ];
      // The wrong-secret token really has the real prefix and a well-formed secret.
      expect(variants[4][1].Authorization.slice(7, 19)).toBe(real.token.slice(0, 12));
      for (const [method, url, body] of routes()) {
        for (const [name, headers] of variants) {
          const res = await send(method, url, body, headers);
          expect({ route: `${method} ${url}`, name, status: res.status, code: res.body.code }).toEqual({
            route: `${method} ${url}`,
            name,
            status: 401,
            code: 'UNAUTHORIZED',
          });
          expect(res.headers['content-type']).toMatch(/^application\/problem\+json/);
          expect(res.headers['www-authenticate']).toBe('Bearer realm="Berth"');
        }
      }
      expect(await a.counts()).toEqual(before);
      // The same real key with its own secret is let in.
      expect((await a.http().get('/v1/jobs').set(a.auth(real.token))).status).toBe(200);
      // …until it is revoked.
      await a.ds.query(`UPDATE api_keys SET revoked_at = now() WHERE prefix = $1`, [real.prefix]);
      expectProblem(await a.http().get('/v1/jobs').set(a.auth(real.token)), 401, 'UNAUTHORIZED');
    }, 60_000);

    it('answers 401 first to a request without a valid key that its query or body would refuse', async () => {
      const post = (headers: Record<string, string>, type: string, body: string, url = '/v1/containers') =>
        a.http().post(url).set(headers).set('Content-Type', type).send(body);
      const refusedBeforeGuard: [string, (h: Record<string, string>) => Promise<Response>, number, string][] =
        [
          ['malformed JSON', (h) => post(h, 'application/json', '{"name": '), 400, 'MALFORMED_JSON'],
          [
            'a body over the limit',
            (h) =>
              post(h, 'application/json', JSON.stringify({ pad: 'x'.repeat(a.config.api.bodyLimitBytes) })),
            413,
            'PAYLOAD_TOO_LARGE',
          ],
          ['a body that is not JSON', (h) => post(h, 'text/plain', 'name=x'), 415, 'UNSUPPORTED_MEDIA_TYPE'],
          [
            'a query on a write',
            (h) => post(h, 'application/json', '{}', '/v1/containers?dryRun=true'),
            400,
            'VALIDATION_FAILED',
          ],
          [
            'a body on a read',
            (h) =>
              a
                .http()
                .get('/v1/jobs')
                .set(h)
                .set('Content-Type', 'application/json')
                .send('{"state":"failed"}'),
            400,
            'VALIDATION_FAILED',
          ],
        ];
      const before = await a.counts();
      for (const [what, send, status, code] of refusedBeforeGuard) {
        for (const headers of [{}, { Authorization: `Bearer ${generateApiKey().token}` }] as Record<
          string,
          string
        >[]) {
          const res = await send(headers);
          expect({ what, status: res.status, code: res.body.code }).toEqual({
            what,
            status: 401,
            code: 'UNAUTHORIZED',
          });
          expect(res.headers['www-authenticate']).toBe('Bearer realm="Berth"');
        }
        // With a valid key, the refusal itself.
        const res = await send(a.auth());
        expect({ what, status: res.status, code: res.body.code }).toEqual({ what, status, code });
      }
      expect(await a.counts()).toEqual(before);
      // Outside /v1 (public: health, readiness) the refusal stands.
      expectProblem(
        await a.http().get('/healthz').set('Content-Type', 'application/json').send('{"a":1}'),
        400,
        'VALIDATION_FAILED',
      );
    });

    it('looks the key up once per request, as it arrives; a request refused before its guard leaves nothing behind', async () => {
      const keys = a.api.get(ApiKeyService) as unknown as { lookup: (token: string) => Promise<unknown> };
      const lookup = jest.spyOn(keys, 'lookup');
      const unhandled: unknown[] = [];
      const onUnhandled = (reason: unknown) => unhandled.push(reason);
      process.on('unhandledRejection', onUnhandled);
      try {
        // The early lookup's answer is the guard's: one lookup for an accepted write with a body.
        const ok = await a.createStopped('edge-early');
        expect(ok.status).toBe(202);
        expect(lookup).toHaveBeenCalledTimes(1);
        // A lookup that fails (PostgreSQL away) for a request its body already refuses: the 400, and no
        // unhandled rejection.
        lookup.mockClear();
        lookup.mockImplementationOnce(() => Promise.reject(new Error('lookup failed')));
        const bad = await a
          .http()
          .post('/v1/containers')
          .set(a.auth())
          .set('Content-Type', 'application/json')
          .send('{"name": ');
        expectProblem(bad, 400, 'MALFORMED_JSON');
        expect(lookup).toHaveBeenCalledTimes(1);
        // A failed lookup that the guard awaits answers an error, never lets the request in.
        lookup.mockImplementationOnce(() => Promise.reject(new Error('lookup failed')));
        const failed = await a.http().get('/v1/jobs').set(a.auth());
        expect(failed.status).toBeGreaterThanOrEqual(500);
        await new Promise((r) => setTimeout(r, 50));
        expect(unhandled).toEqual([]);
      } finally {
        process.off('unhandledRejection', onUnhandled);
        lookup.mockRestore();
      }
    });
  });

  describe('bad input: 4xx problem+json, nothing written, no job', () => {
    const valid = () => ({ name: 'edge-valid', template: a.template, cpus: 1, memoryBytes: 64 * MiB });
    async function refused(req: () => Promise<Response>, status: number, code: string): Promise<Response> {
      const before = await a.counts();
      const res = await req();
      expectProblem(res, status, code);
      expect(await a.counts()).toEqual(before);
      return res;
    }
    const create = (body: unknown) => () =>
      a
        .http()
        .post('/v1/containers')
        .set(a.auth())
        .send(body as object);

    it.each([
      ['uppercase', 'Web-1'],
      ['too long', 'a'.repeat(64)],
      ['dots', '..'],
      ['empty', ''],
      ['leading dash', '-web'],
      ['slash', 'a/b'],
      ['not a string', 42],
    ])('refuses an invalid name (%s)', async (_, name) => {
      const res = await refused(create({ ...valid(), name }), 400, 'VALIDATION_FAILED');
      expect(res.body.errors.join(' ')).toMatch(/name/);
    });

    it('refuses an unknown template with 422 TEMPLATE_NOT_FOUND, and a malformed one with 400', async () => {
      await refused(create({ ...valid(), template: 'no-such-template' }), 422, 'TEMPLATE_NOT_FOUND');
      await refused(create({ ...valid(), template: '../etc' }), 400, 'VALIDATION_FAILED');
    });

    it.each([
      ['cpus', -1],
      ['cpus', 0],
      ['cpus', 1e9],
      ['cpus', 0.001],
      ['cpus', '1'],
      ['memoryBytes', -MiB],
      ['memoryBytes', 0],
      ['memoryBytes', 2 * TiB],
      ['memoryBytes', 1e300],
      ['memoryBytes', 64 * MiB + 0.5],
      ['memoryBytes', '67108864'],
      ['diskBytes', 0],
      ['diskBytes', 1.5],
      ['pidsMax', -5],
      ['pidsMax', 0],
      ['pidsMax', 1e12],
      ['pidsMax', 100.5],
    ])('refuses %s = %p', async (field, value) => {
      const res = await refused(create({ ...valid(), [field]: value }), 400, 'VALIDATION_FAILED');
      expect(res.body.errors.join(' ')).toContain(field);
    });

    it.each([['diskBytes'], ['pidsMax'], ['network'], ['privileged'], ['host'], ['start']])(
      'refuses %s = null (left out is fine; null is not a value)',
      async (field) => {
        const res = await refused(create({ ...valid(), [field]: null }), 400, 'VALIDATION_FAILED');
        expect(res.body.errors.join(' ')).toContain(field);
      },
    );

    it('refuses null in the optional fields of the other writes', async () => {
      for (const [method, url, body] of [
        ['patch', `/v1/containers/${containerId}`, { cpus: null }],
        ['patch', `/v1/containers/${containerId}`, { cpus: 2, memoryBytes: null }],
        // Validation comes before the state machine: edge-ok's stop would be a 409 with a valid body.
        ['post', `/v1/containers/${containerId}/stop`, { timeoutMs: null }],
        // A grace is a stop's only: the other actions take no body.
        ['post', `/v1/containers/${containerId}/start`, { timeoutMs: 1000 }],
        ['post', `/v1/containers/${containerId}/restart`, { timeoutMs: 1000 }],
        ['post', '/v1/templates', { name: 'edge-null', source: 'tarball', path: null }],
      ] as [Method, string, object][]) {
        const res = await refused(
          () => a.http()[method](url).set(a.auth()).send(body),
          400,
          'VALIDATION_FAILED',
        );
        expect(res.body.errors.join(' ')).toMatch(/cpus|memoryBytes|timeoutMs|path/);
      }
    });

    it("refuses '..' inside snapshot and template names, which the runtime would refuse later", async () => {
      await refused(
        () => a.http().post(`/v1/containers/${containerId}/snapshots`).set(a.auth()).send({ name: 'a..b' }),
        400,
        'VALIDATION_FAILED',
      );
      await refused(create({ ...valid(), template: 'a..b' }), 400, 'VALIDATION_FAILED');
      const templates = async () => (await a.http().get('/v1/templates').set(a.auth())).body.length;
      const before = await templates();
      await refused(
        () => a.http().post('/v1/templates').set(a.auth()).send({ name: 'a..b', source: 'builtin:busybox' }),
        400,
        'VALIDATION_FAILED',
      );
      expect(await templates()).toBe(before);
      // An import naming an unknown host: 422 as for a create, and no template row left behind.
      await refused(
        () =>
          a
            .http()
            .post('/v1/templates')
            .set(a.auth())
            .send({ name: 'edge-nohost', source: 'builtin:busybox', host: UNKNOWN }),
        422,
        'HOST_NOT_FOUND',
      );
      expect(await templates()).toBe(before);
    });

    it('refuses missing required fields, naming each as required', async () => {
      const res = await refused(create({ name: 'edge-missing' }), 400, 'VALIDATION_FAILED');
      expect(res.body.errors).toEqual([
        'template is required',
        'cpus is required',
        'memoryBytes is required',
      ]);
    });

    it('says a value of the wrong type is of the wrong type, and only that', async () => {
      const res = await refused(
        create({ ...valid(), cpus: 'two', memoryBytes: '256M' }),
        400,
        'VALIDATION_FAILED',
      );
      expect(res.body.errors).toEqual([
        expect.stringMatching(/^cpus must be a number/),
        'memoryBytes must be an integer number',
      ]);
    });

    it('refuses a container no host has room for now with 503 NO_CAPACITY', async () => {
      // Valid, and within the only host's 8 GiB, but more than it has free (edge-ok holds 64 MiB).
      const res = await refused(
        create({ ...valid(), memoryBytes: 8 * 1024 * MiB - 32 * MiB }),
        503,
        'NO_CAPACITY',
      );
      expect(res.body.reasons).toEqual([expect.stringContaining('not enough memory')]);
    });

    it('refuses a container larger than every host with 422 EXCEEDS_HOST_CAPACITY: no freed room ends it', async () => {
      const memory = await refused(
        create({ ...valid(), memoryBytes: 64 * 1024 * MiB }),
        422,
        'EXCEEDS_HOST_CAPACITY',
      );
      expect(memory.body.reasons).toEqual([`edge-h1: has ${8 * 1024 * MiB} bytes of memory`]);
      // More CPUs than the host has (4): the runtime would refuse the limit; overcommit is across containers.
      const cpus = await refused(create({ ...valid(), cpus: 8 }), 422, 'EXCEEDS_HOST_CAPACITY');
      expect(cpus.body.reasons).toEqual(['edge-h1: has 4 CPUs']);
      const disk = await refused(
        create({ ...valid(), diskBytes: 200 * 1024 * MiB }),
        422,
        'EXCEEDS_HOST_CAPACITY',
      );
      expect(disk.body.reasons).toEqual([`edge-h1: has ${100 * 1024 * MiB} bytes of disk`]);
    });

    it('refuses a resize larger than its host with 422 EXCEEDS_HOST_CAPACITY, before any job exists', async () => {
      const patch = (body: object) => () =>
        a.http().patch(`/v1/containers/${containerId}`).set(a.auth()).send(body);
      const cpus = await refused(patch({ cpus: 4.5 }), 422, 'EXCEEDS_HOST_CAPACITY');
      expect(cpus.body.reasons).toEqual(['edge-h1: has 4 CPUs']);
      const memory = await refused(patch({ memoryBytes: 16 * 1024 * MiB }), 422, 'EXCEEDS_HOST_CAPACITY');
      expect(memory.body.reasons).toEqual([`edge-h1: has ${8 * 1024 * MiB} bytes of memory`]);
    });

    it('refuses unknown fields with 400, naming them', async () => {
      const res = await refused(create({ ...valid(), colour: 'blue' }), 400, 'VALIDATION_FAILED');
      expect(res.body.errors).toContain('property colour should not exist');
      await refused(
        () => a.http().patch(`/v1/containers/${containerId}`).set(a.auth()).send({ cpus: 2, root: true }),
        400,
        'VALIDATION_FAILED',
      );
      await refused(
        () => a.http().post(`/v1/containers/${containerId}/start`).set(a.auth()).send({ force: true }),
        400,
        'VALIDATION_FAILED',
      );
      // Writes that take no body refuse fields too, rather than ignore them.
      for (const [method, url] of [
        ['delete', `/v1/containers/${containerId}`],
        ['post', `/v1/jobs/${UNKNOWN}/retry`],
        ['post', `/v1/jobs/${UNKNOWN}/cancel`],
        ['post', `/v1/hosts/${a.hostId}/drain`],
        ['post', `/v1/hosts/${a.hostId}/undrain`],
      ] as [Method, string][]) {
        const res = await refused(
          () => a.http()[method](url).set(a.auth()).send({ force: true }),
          400,
          'VALIDATION_FAILED',
        );
        expect(res.body.errors).toEqual(['property force should not exist']);
      }
    });

    it('refuses malformed JSON with 400 MALFORMED_JSON', async () => {
      for (const body of ['{"name": "x",', '{name: 1}', 'null', '"a string"', '{"a":1}}']) {
        await refused(
          () =>
            a.http().post('/v1/containers').set(a.auth()).set('Content-Type', 'application/json').send(body),
          400,
          'MALFORMED_JSON',
        );
      }
    });

    it('refuses a query parameter on a write instead of ignoring it (a DELETE ?dryRun=true destroys nothing)', async () => {
      const before = await a.counts();
      for (const [method, url] of [
        ['delete', `/v1/containers/${containerId}?dryRun=true`],
        ['post', `/v1/containers/${containerId}/stop?force=true`],
        ['patch', `/v1/containers/${containerId}?x=1`],
        ['post', `/v1/containers?dryRun=1`],
      ] as [Method, string][]) {
        const res = await refused(
          () => a.http()[method](url).set(a.auth()).send({}),
          400,
          'VALIDATION_FAILED',
        );
        expect(res.body.detail).toMatch(/takes no query parameters/);
      }
      expect(await a.counts()).toEqual(before);
    });

    it('answers a method a path does not take with 405 and Allow, an unknown path with 404', async () => {
      const put = await a.http().put('/v1/containers').set(a.auth()).send({});
      expectProblem(put, 405, 'METHOD_NOT_ALLOWED');
      expect(put.headers.allow).toBe('GET, HEAD, POST');
      const del = await a.http().delete('/v1/jobs').set(a.auth());
      expectProblem(del, 405, 'METHOD_NOT_ALLOWED');
      expect(del.headers.allow).toBe('GET, HEAD');
      const one = await a.http().put(`/v1/containers/${containerId}`).set(a.auth()).send({});
      expectProblem(one, 405, 'METHOD_NOT_ALLOWED');
      expect(one.headers.allow).toBe('DELETE, GET, HEAD, PATCH');
      const options = await a.http().options(`/v1/containers/${containerId}`).set(a.auth());
      expect({ status: options.status, allow: options.headers.allow }).toEqual({
        status: 204,
        allow: 'DELETE, GET, HEAD, PATCH, OPTIONS',
      });
      expectProblem(await a.http().get('/v1/nothing-here').set(a.auth()), 404, 'NOT_FOUND');
      expectProblem(await a.http().put('/v1/nothing-here').set(a.auth()).send({}), 404, 'NOT_FOUND');
    });

    it('refuses a body on a read instead of ignoring the filters in it', async () => {
      const res = await a
        .http()
        .get('/v1/containers')
        .set(a.auth())
        .set('Content-Type', 'application/json')
        .send(JSON.stringify({ name: 'edge-ok' }));
      expectProblem(res, 400, 'VALIDATION_FAILED');
      expect(res.body.detail).toMatch(/GET takes no body/);
      expect((await a.http().get('/v1/containers?name=edge-ok').set(a.auth())).status).toBe(200);
      // A chunked request with nothing in it (some clients send one) is no body.
      const empty = await new Promise<number>((resolve, reject) => {
        const server = a.api.getHttpServer() as Server;
        const go = () => {
          const { port } = server.address() as AddressInfo;
          const req = httpRequest(
            {
              port,
              host: '127.0.0.1',
              path: '/v1/containers',
              method: 'GET',
              agent: false,
              headers: { ...a.auth(), 'Transfer-Encoding': 'chunked', Connection: 'close' },
            },
            (res) => (res.resume(), resolve(res.statusCode ?? 0)),
          );
          req.on('error', reject);
          req.end();
        };
        if (server.listening) go();
        else server.listen(0, '127.0.0.1', go);
      });
      expect(empty).toBe(200);
    });

    it('refuses a body nested deeper than any of ours (well within the size limit) with 400, not a 500', async () => {
      const deep = '{"a":'.repeat(3000) + '1' + '}'.repeat(3000);
      expect(deep.length).toBeLessThan(a.config.api.bodyLimitBytes);
      for (const url of ['/v1/containers', `/v1/containers/${containerId}/start`])
        await refused(
          () => a.http().post(url).set(a.auth()).set('Content-Type', 'application/json').send(deep),
          400,
          'MALFORMED_JSON',
        );
    });

    it('refuses a string that is not valid Unicode (a lone surrogate) with 400, not a 500 from PostgreSQL', async () => {
      // JSON's escapes can spell half a surrogate pair; PostgreSQL's jsonb and text refuse it.
      const half = '\\ud800';
      for (const [url, body, code] of [
        ['/v1/templates', `{"name":"lone","source":"tarball","path":"/srv/${half}.tar"}`, 'MALFORMED_JSON'],
        ['/v1/containers', `{"name":"x${half}","template":"busybox"}`, 'MALFORMED_JSON'],
        ['/v1/containers', `{"name":"lone","template":"busybox","${half}":1}`, 'MALFORMED_JSON'],
        // A pair spelled with escapes is a character like any other (refused here by the name's pattern).
        ['/v1/containers', '{"name":"x\\ud83d\\ude00","template":"busybox"}', 'VALIDATION_FAILED'],
      ])
        await refused(
          () => a.http().post(url).set(a.auth()).set('Content-Type', 'application/json').send(body),
          400,
          code,
        );
    });

    it('refuses a body over the limit with 413 PAYLOAD_TOO_LARGE', async () => {
      const big = { ...valid(), padding: 'x'.repeat(a.config.api.bodyLimitBytes) };
      await refused(create(big), 413, 'PAYLOAD_TOO_LARGE');
    });

    it('refuses a body that is not JSON with 415 UNSUPPORTED_MEDIA_TYPE', async () => {
      await refused(
        () =>
          a
            .http()
            .post('/v1/containers')
            .set(a.auth())
            .set('Content-Type', 'text/plain')
            .send(JSON.stringify(valid())),
        415,
        'UNSUPPORTED_MEDIA_TYPE',
      );
      await refused(
        () => a.http().post('/v1/containers').set(a.auth()).type('form').send({ name: 'edge-form' }),
        415,
        'UNSUPPORTED_MEDIA_TYPE',
      );
      await refused(
        () =>
          a
            .http()
            .patch(`/v1/containers/${containerId}`)
            .set(a.auth())
            .set('Content-Type', 'application/xml')
            .send('<cpus>2</cpus>'),
        415,
        'UNSUPPORTED_MEDIA_TYPE',
      );
    });

    it('answers a request Node refuses before any route (headers too large, not HTTP) with problem+json', async () => {
      const server = a.api.getHttpServer() as Server;
      if (!server.listening) await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
      const { port } = server.address() as AddressInfo;
      /** One request written raw on its own connection: the status line and the parsed body. */
      const connections = () =>
        new Promise<number>((resolve, reject) =>
          server.getConnections((e, n) => (e ? reject(e) : resolve(n))),
        );
      /**
       * One request written raw on its own connection, which the client keeps half-open (as some do): the
       * status line and the parsed body, once the server has closed its side; and whether the server let
       * go of the connection (it must not wait for the client).
       */
      const raw = (text: string) =>
        new Promise<{ head: string; body: Record<string, unknown>; released: boolean }>((resolve, reject) => {
          let out = '';
          const socket = connect({ port, host: '127.0.0.1', allowHalfOpen: true }, () => socket.write(text));
          socket.on('data', (d) => (out += d.toString()));
          socket.on('error', reject);
          socket.on('end', () => {
            const [head, body] = out.split('\r\n\r\n');
            void (async () => {
              let open = await connections();
              for (let i = 0; i < 50 && open > 0; i++) {
                await new Promise((r) => setTimeout(r, 20));
                open = await connections();
              }
              socket.destroy();
              resolve({ head, body: body ? JSON.parse(body) : null, released: open === 0 });
            })().catch(reject);
          });
        });
      const huge = await raw(`GET /v1/hosts HTTP/1.1\r\nHost: x\r\nX-Padding: ${'a'.repeat(20_000)}\r\n\r\n`);
      expect(huge.head).toMatch(/^HTTP\/1.1 431 /);
      expect(huge.head).toMatch(/content-type: application\/problem\+json/i);
      expect(huge.body).toMatchObject({ status: 431, code: 'HEADERS_TOO_LARGE', title: 'HEADERS_TOO_LARGE' });
      expect(huge.released).toBe(true);
      const garbage = await raw('NOT HTTP AT ALL\r\n\r\n');
      expect(garbage.head).toMatch(/^HTTP\/1.1 400 /);
      expect(garbage.body).toMatchObject({ status: 400, code: 'BAD_REQUEST' });
      expect(garbage.released).toBe(true);
      // No framework banner on ordinary answers either.
      const res = await a.http().get('/healthz');
      expect(res.status).toBe(200);
      expect(res.headers['x-powered-by']).toBeUndefined();
    });

    it('reads a +json body like a JSON one: its fields are validated, not dropped', async () => {
      const res = await refused(
        () =>
          a
            .http()
            .patch(`/v1/containers/${containerId}`)
            .set(a.auth())
            .set('Content-Type', 'application/merge-patch+json')
            .send(JSON.stringify({ cpus: 2, root: true })),
        400,
        'VALIDATION_FAILED',
      );
      expect(res.body.errors).toContain('property root should not exist');
    });

    it('refuses an invalid UUID in the path with 400 INVALID_ID', async () => {
      for (const [method, url] of [
        ['get', '/v1/containers/nope'],
        ['post', '/v1/containers/123/start'],
        ['patch', '/v1/containers/1e3'],
        ['delete', `/v1/containers/${containerId}x`],
        ['get', '/v1/jobs/not-a-uuid'],
        ['get', '/v1/jobs/not-a-uuid/wait'],
        ['get', '/v1/jobs/not-a-uuid/events'],
        ['post', '/v1/hosts/h1/drain'],
      ] as [Method, string][]) {
        const r = a.http()[method](url).set(a.auth());
        // The body is valid, so that only the id can be refused (Nest runs the pipes of all params at once).
        const body = method === 'patch' ? { cpus: 1 } : {};
        await refused(() => (method === 'get' ? r : r.send(body)), 400, 'INVALID_ID');
      }
    });

    it('answers 404 CONTAINER_NOT_FOUND for an unknown container, for reads and writes', async () => {
      await refused(
        () => a.http().get(`/v1/containers/${UNKNOWN}`).set(a.auth()),
        404,
        'CONTAINER_NOT_FOUND',
      );
      await refused(
        () => a.http().post(`/v1/containers/${UNKNOWN}/start`).set(a.auth()).send({}),
        404,
        'CONTAINER_NOT_FOUND',
      );
      await refused(
        () => a.http().delete(`/v1/containers/${UNKNOWN}`).set(a.auth()),
        404,
        'CONTAINER_NOT_FOUND',
      );
      await refused(() => a.http().get(`/v1/jobs/${UNKNOWN}`).set(a.auth()), 404, 'JOB_NOT_FOUND');
    });

    it('refuses a transition the state machine does not allow with 409, before any job exists', async () => {
      // edge-ok was created with start=false: its target is stopped, so it cannot be paused or resumed.
      await refused(
        () => a.http().post(`/v1/containers/${containerId}/pause`).set(a.auth()).send({}),
        409,
        'INVALID_TRANSITION',
      );
      await refused(
        () => a.http().post(`/v1/containers/${containerId}/stop`).set(a.auth()).send({}),
        409,
        'INVALID_TRANSITION',
      );
    });

    it('refuses bad query parameters', async () => {
      await refused(
        () => a.http().get('/v1/containers?state=exploded').set(a.auth()),
        400,
        'VALIDATION_FAILED',
      );
      await refused(() => a.http().get('/v1/jobs?limit=0').set(a.auth()), 400, 'VALIDATION_FAILED');
      await refused(() => a.http().get('/v1/jobs?since=yesterday').set(a.auth()), 400, 'VALIDATION_FAILED');
      await refused(() => a.http().get('/v1/containers?cursor=abc').set(a.auth()), 400, 'INVALID_CURSOR');
      // ISO 8601 forms PostgreSQL does not read as a timestamp, and an impossible day.
      for (const since of [
        '2024-W01-1',
        '2024',
        '2024-02-30T00:00:00Z',
        '-2024-01-01',
        '2026-01-01T00:00+20:00',
      ])
        await refused(
          () =>
            a
              .http()
              .get(`/v1/jobs?since=${encodeURIComponent(since)}`)
              .set(a.auth()),
          400,
          'VALIDATION_FAILED',
        );
      expect((await a.http().get('/v1/jobs?since=2024-02-29T10:00:00Z').set(a.auth())).status).toBe(200);
      // Cursors of the right shape but with a date or an id PostgreSQL would refuse.
      const cursor = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url');
      for (const c of [
        cursor(['2024-02-30T00:00:00.000000Z', UNKNOWN]),
        cursor(['0000-01-01T00:00:00.000000Z', UNKNOWN]),
        cursor(['2024-01-01T00:00:00.000000Z', '-'.repeat(36)]),
        cursor(['2024-01-01', UNKNOWN]),
        cursor([1, UNKNOWN]),
      ]) {
        for (const list of ['/v1/jobs', '/v1/containers'])
          await refused(() => a.http().get(`${list}?cursor=${c}`).set(a.auth()), 400, 'INVALID_CURSOR');
      }
      // Audit event ids are bigints: no exponent, no more digits than they have.
      for (const after of ['1e30', '99999999999999999999', '-1', '1.5'])
        await refused(() => a.http().get(`/v1/audit?after=${after}`).set(a.auth()), 400, 'VALIDATION_FAILED');
      expect((await a.http().get('/v1/audit?after=0&limit=1').set(a.auth())).status).toBe(200);
    });

    it('audit: an event waits for the transactions older than its own, so paging with `after` misses none', async () => {
      const subject = randomUUID();
      const event = (m: { query: (q: string, a: unknown[]) => Promise<{ id: string }[]> }, action: string) =>
        m
          .query(
            `INSERT INTO audit_events (actor, action, subject_type, subject_id) VALUES ('test', $1, 'container', $2)
             RETURNING id`,
            [action, subject],
          )
          .then(([r]) => r.id);
      const read = async (after?: string) =>
        (
          (
            await a
              .http()
              .get(`/v1/audit?subject=${subject}${after ? `&after=${after}` : ''}`)
              .set(a.auth())
          ).body as { id: string; action: string }[]
        ).map((e) => e.action);
      // A's event takes the smaller id, B's commits first: by id alone a reader would get B's, page past
      // A's with `after`, and never see it.
      const txA = a.ds.createQueryRunner();
      await txA.connect();
      let first: string[];
      try {
        await txA.startTransaction();
        await event(txA, 'test.a');
        await event(a.ds, 'test.b');
        first = await read();
        await txA.commitTransaction();
      } finally {
        await txA.release();
      }
      expect(first).toEqual([]);
      const all = (await a.http().get(`/v1/audit?subject=${subject}`).set(a.auth())).body as { id: string }[];
      expect(all.map((e) => (e as unknown as { action: string }).action)).toEqual(['test.a', 'test.b']);
      expect(await read(all[0].id)).toEqual(['test.b']);
      expect(await read(all[1].id)).toEqual([]);
    });

    it('sets Location only on an accepted retry, not on its problem', async () => {
      const res = await refused(
        () => a.http().post(`/v1/jobs/${UNKNOWN}/retry`).set(a.auth()).send({}),
        404,
        'JOB_NOT_FOUND',
      );
      expect(res.headers.location).toBeUndefined();
    });

    it("reads a job's story by subject as by job, and a container's with its jobs'", async () => {
      const [{ id: jobId }] = await a.ds.query(`SELECT id FROM jobs WHERE container_id = $1 LIMIT 1`, [
        containerId,
      ]);
      const story = async (q: string) =>
        (await a.http().get(`/v1/audit?${q}`).set(a.auth())).body as { jobId: string | null }[];
      const bySubject = await story(`subject=${jobId}`);
      expect(bySubject.length).toBeGreaterThan(0);
      expect(bySubject).toEqual(await story(`job=${jobId}`));
      expect(bySubject.every((e) => e.jobId === jobId)).toBe(true);
      expect((await story(`subject=${containerId}`)).map((e) => e.jobId)).toContain(jobId);
    });

    it('still accepts the valid request after all of that', async () => {
      const before = await a.counts();
      const res = await a.http().post('/v1/containers').set(a.auth()).send(valid());
      expect(res.status).toBe(202);
      expect(res.headers.location).toBe(`/v1/jobs/${res.body.job.id}`);
      expect(await a.counts()).toEqual({
        containers: before.containers + 1,
        jobs: before.jobs + 1,
        outbox: before.outbox + 1,
      });
    });
  });
});

describe('keys of a tenant (room for tenants, no holes)', () => {
  let a: ApiOnly;
  let mine: string;
  let theirs: string;
  let theirsAdmin: string;
  beforeAll(async () => {
    a = await startApiOnly('tenants');
    const tenant = async (name: string) =>
      (
        (await a.ds.query(`INSERT INTO tenants (name) VALUES ($1) RETURNING id`, [name])) as { id: string }[]
      )[0].id;
    mine = await createTestKey(a.ds, [], await tenant('t-mine'));
    const theirTenant = await tenant('t-theirs');
    theirs = await createTestKey(a.ds, [], theirTenant);
    // A tenant's key with the admin scope is still that tenant's for the tenant's resources.
    theirsAdmin = await createTestKey(a.ds, ['admin'], theirTenant);
  }, 60_000);
  afterAll(() => a?.close(), 30_000);

  /** `POST /v1/containers` with this tenant's key: a small container, not started (must be accepted). */
  const createMine = async (name: string) => {
    const res = await a
      .http()
      .post('/v1/containers')
      .set(a.auth(mine))
      .send({ name, template: a.template, cpus: 1, memoryBytes: 64 * MiB, start: false });
    expect(res.status).toBe(202);
    return res.body as { job: { id: string }; container: { id: string } };
  };

  it('sees only its own containers, jobs and audit trail; the fleet’s writes and privileged containers are refused', async () => {
    const { job, container } = await createMine('mine-1');

    // The other tenant: as if neither existed, with or without the admin scope.
    const other = (m: Method, url: string, key: string) => {
      const r = a.http()[m](url).set(a.auth(key));
      return m === 'get' ? r : r.send({});
    };
    for (const key of [theirs, theirsAdmin])
      for (const [m, url] of [
        ['get', `/v1/containers/${container.id}`],
        ['get', `/v1/jobs/${job.id}`],
        ['get', `/v1/jobs/${job.id}/wait?timeout=0`],
        ['get', `/v1/jobs/${job.id}/events`],
        ['post', `/v1/jobs/${job.id}/cancel`],
        ['post', `/v1/jobs/${job.id}/retry`],
      ] as [Method, string][]) {
        const res = await other(m, url, key);
        expect({ key: key === theirs ? 'theirs' : 'theirs, admin', url, status: res.status }).toMatchObject({
          status: 404,
        });
      }
    const ids = async (key: string, url: string) =>
      ((await a.http().get(url).set(a.auth(key))).body.items as { id: string }[]).map((x) => x.id);
    expect(await ids(theirs, '/v1/jobs')).not.toContain(job.id);
    expect(await ids(mine, '/v1/jobs')).toContain(job.id);
    expect(await ids(a.token, '/v1/jobs')).toContain(job.id);
    const story = async (key: string) =>
      (await a.http().get(`/v1/audit?subject=${container.id}`).set(a.auth(key))).body as unknown[];
    expect(await story(theirs)).toEqual([]);
    expect((await story(mine)).length).toBeGreaterThanOrEqual(2);
    expect((await a.http().get(`/v1/jobs/${job.id}`).set(a.auth(mine))).status).toBe(200);

    // The fleet is the operator's: drain, undrain, template import; and real root inside a container.
    for (const url of [`/v1/hosts/${a.hostId}/drain`, `/v1/hosts/${a.hostId}/undrain`]) {
      const res = await a.http().post(url).set(a.auth(mine)).send({});
      expectProblem(res, 403, 'FORBIDDEN');
    }
    const before = await a.counts();
    expectProblem(
      await a
        .http()
        .post('/v1/templates')
        .set(a.auth(mine))
        .send({ name: 'tenant-tpl', source: 'builtin:busybox' }),
      403,
      'FORBIDDEN',
    );
    expectProblem(
      await a
        .http()
        .post('/v1/containers')
        .set(a.auth(mine))
        .send({ name: 'mine-root', template: a.template, cpus: 1, memoryBytes: 64 * MiB, privileged: true }),
      403,
      'FORBIDDEN',
    );
    expect(await a.counts()).toEqual(before);
  });

  it("is told its job waits for its host, not which host; its container's story does not name the host", async () => {
    const { job, container } = await createMine('mine-waiting');
    const [{ beat }] = await a.ds.query(`SELECT last_heartbeat_at AS beat FROM hosts WHERE id = $1`, [
      a.hostId,
    ]);
    await a.ds.query(`UPDATE hosts SET last_heartbeat_at = now() - interval '1 hour' WHERE id = $1`, [
      a.hostId,
    ]);
    try {
      const asTenant = [
        (await a.http().get(`/v1/jobs/${job.id}`).set(a.auth(mine))).body,
        (await a.http().get(`/v1/jobs/${job.id}/wait?timeout=0`).set(a.auth(mine))).body,
      ];
      for (const view of asTenant) {
        expect(view.waitingReason).toMatch(/^waiting for its host: offline since \d{4}-/);
        expect(JSON.stringify(view)).not.toContain('tenants-h1');
      }
      const asAdmin = await a.http().get(`/v1/jobs/${job.id}`).set(a.auth());
      expect(asAdmin.body.waitingReason).toMatch(/^waiting for host tenants-h1: offline since \d{4}-/);
    } finally {
      await a.ds.query(`UPDATE hosts SET last_heartbeat_at = $2 WHERE id = $1`, [a.hostId, beat]);
    }
    const story = async (key?: string) =>
      (await a.http().get(`/v1/audit?subject=${container.id}`).set(a.auth(key))).body as {
        action: string;
        data: Record<string, unknown>;
      }[];
    const requested = (events: { action: string; data: Record<string, unknown> }[]) =>
      events.find((e) => e.action === 'container.create.requested')!;
    expect(requested(await story(mine)).data).toMatchObject({ name: 'mine-waiting' });
    expect(requested(await story(mine)).data).not.toHaveProperty('host');
    expect(JSON.stringify(await story(mine))).not.toContain('tenants-h1');
    expect(requested(await story()).data).toMatchObject({ name: 'mine-waiting', host: 'tenants-h1' });
  });

  it("does not see the fleet's jobs and events (a template import, hosts), even with a key that sees every tenant's jobs", async () => {
    const plain = await createTestKey(a.ds, []); // no tenant, no admin scope
    const imported = await a
      .http()
      .post('/v1/templates')
      .set(a.auth())
      .send({ name: 'fleet-tpl', source: 'builtin:busybox', host: a.hostId });
    expect(imported.status).toBe(202);
    const jobId = (imported.body.jobs as { id: string }[])[0].id;
    await createMine('mine-story');
    // As if it did not exist: not listed, not found, not cancelled, not retried.
    for (const key of [plain, mine]) {
      const listed = (await a.http().get('/v1/jobs?limit=200').set(a.auth(key))).body.items as {
        id: string;
      }[];
      expect(listed.map((j) => j.id)).not.toContain(jobId);
      for (const [m, url] of [
        ['get', `/v1/jobs/${jobId}`],
        ['get', `/v1/jobs/${jobId}/wait?timeout=0`],
        ['get', `/v1/jobs/${jobId}/events`],
        ['post', `/v1/jobs/${jobId}/cancel`],
        ['post', `/v1/jobs/${jobId}/retry`],
      ] as const) {
        const r = m === 'get' ? a.http().get(url) : a.http().post(url).send({});
        expectProblem(await r.set(a.auth(key)), 404, 'JOB_NOT_FOUND');
      }
      // The audit trail: the stories of containers only (no host, template or fleet job events).
      const events = (await a.http().get('/v1/audit?limit=1000').set(a.auth(key))).body as {
        subjectType: string;
        jobId: string | null;
      }[];
      expect(events.length).toBeGreaterThan(0);
      expect([...new Set(events.map((e) => e.subjectType))]).toEqual(['container']);
      expect(events.map((e) => e.jobId)).not.toContain(jobId);
    }
    // The operator sees them all.
    const asAdmin = (await a.http().get('/v1/audit?limit=1000').set(a.auth())).body as {
      subjectType: string;
      jobId: string | null;
    }[];
    expect(asAdmin.map((e) => e.subjectType)).toContain('template');
    expect(asAdmin.map((e) => e.jobId)).toContain(jobId);
    expect(
      ((await a.http().get('/v1/jobs?limit=200').set(a.auth())).body.items as { id: string }[]).map(
        (j) => j.id,
      ),
    ).toContain(jobId);
    const cancelled = await a.http().post(`/v1/jobs/${jobId}/cancel`).set(a.auth()).send({});
    expect(cancelled.body).toMatchObject({ state: 'cancelled' });
    expect((await a.http().get(`/v1/jobs/${jobId}`).set(a.auth())).body.state).toBe('cancelled');
  });

  it('does not see the fleet: no host list, no choice of host, no per-host reasons when there is no room', async () => {
    expectProblem(await a.http().get('/v1/hosts').set(a.auth(mine)), 403, 'FORBIDDEN');
    expect((await a.http().get('/v1/hosts').set(a.auth())).status).toBe(200);
    // Templates: their names and whether they can be used; not where they come from (a path on the
    // hosts) nor which hosts have them.
    const seen = (await a.http().get('/v1/templates').set(a.auth(mine))).body as Record<string, unknown>[];
    const tpl = seen.find((t) => t.name === a.template)!;
    expect(tpl).toMatchObject({ name: a.template, ready: true });
    expect(tpl).not.toHaveProperty('source');
    expect(tpl).not.toHaveProperty('replicas');
    const asAdmin = (await a.http().get('/v1/templates').set(a.auth())).body as Record<string, unknown>[];
    expect(asAdmin.find((t) => t.name === a.template)).toMatchObject({
      ready: true,
      source: expect.any(String),
      replicas: [expect.objectContaining({ hostId: a.hostId, state: 'ready' })],
    });
    const before = await a.counts();
    const body = { template: a.template, cpus: 1, memoryBytes: 64 * MiB, start: false };
    expectProblem(
      await a
        .http()
        .post('/v1/containers')
        .set(a.auth(mine))
        .send({ ...body, name: 'mine-there', host: a.hostId }),
      403,
      'FORBIDDEN',
    );
    // No room now: 503 as for an admin, without the hosts' names and what they have free.
    const [{ total }] = await a.ds.query(`SELECT memory_bytes AS total FROM hosts WHERE id = $1`, [a.hostId]);
    const full = await a
      .http()
      .post('/v1/containers')
      .set(a.auth(mine))
      .send({ ...body, name: 'mine-huge', memoryBytes: Number(total) });
    expectProblem(full, 503, 'NO_CAPACITY');
    expect(full.body.reasons).toBeUndefined();
    expect(JSON.stringify(full.body)).not.toContain('tenants-h1');
    const admin = await a
      .http()
      .post('/v1/containers')
      .set(a.auth())
      .send({ ...body, name: 'admin-huge', memoryBytes: Number(total) });
    expect(admin.body.reasons).toEqual([expect.stringMatching(/^tenants-h1: not enough memory/)]);
    // Larger than any host: 422, as for an admin, without the hosts' names and sizes.
    const never = await a
      .http()
      .post('/v1/containers')
      .set(a.auth(mine))
      .send({ ...body, name: 'mine-never', memoryBytes: TiB });
    expectProblem(never, 422, 'EXCEEDS_HOST_CAPACITY');
    expect(never.body.reasons).toBeUndefined();
    expect(JSON.stringify(never.body)).not.toContain('tenants-h1');
    expect(JSON.stringify(never.body)).not.toContain(String(total));
    const adminNever = await a
      .http()
      .post('/v1/containers')
      .set(a.auth())
      .send({ ...body, name: 'admin-never', memoryBytes: TiB });
    expect(adminNever.body.reasons).toEqual([`tenants-h1: has ${total} bytes of memory`]);
    expect(await a.counts()).toEqual(before);
    // A resize too.
    const made = await a
      .http()
      .post('/v1/containers')
      .set(a.auth(mine))
      .send({ ...body, name: 'mine-small' });
    const grow = await a
      .http()
      .patch(`/v1/containers/${made.body.container.id}`)
      .set(a.auth(mine))
      .send({ memoryBytes: Number(total) });
    expectProblem(grow, 503, 'NO_CAPACITY');
    expect(grow.body.reasons).toBeUndefined();
    expect(JSON.stringify(grow.body)).not.toContain('tenants-h1');
    const growNever = await a
      .http()
      .patch(`/v1/containers/${made.body.container.id}`)
      .set(a.auth(mine))
      .send({ cpus: 64 });
    expectProblem(growNever, 422, 'EXCEEDS_HOST_CAPACITY');
    expect(growNever.body.reasons).toBeUndefined();
    expect(JSON.stringify(growNever.body)).not.toContain('tenants-h1');
    // A resize that fitted, cancelled, then retried once the room is gone: the retry's refusal as well.
    const fits = await a
      .http()
      .patch(`/v1/containers/${made.body.container.id}`)
      .set(a.auth(mine))
      .send({ memoryBytes: 128 * MiB });
    expect(fits.status).toBe(202);
    expect((await a.http().post(`/v1/jobs/${fits.body.job.id}/cancel`).set(a.auth(mine))).status).toBe(200);
    const [{ free }] = await a.ds.query(
      `SELECT memory_bytes - reserved_memory_bytes AS free FROM hosts WHERE id = $1`,
      [a.hostId],
    );
    const filler = await a
      .http()
      .post('/v1/containers')
      .set(a.auth())
      .send({ ...body, name: 'admin-filler', memoryBytes: Number(free) - 32 * MiB });
    expect(filler.status).toBe(202);
    const retried = await a.http().post(`/v1/jobs/${fits.body.job.id}/retry`).set(a.auth(mine));
    expectProblem(retried, 503, 'NO_CAPACITY');
    expect(retried.body.reasons).toBeUndefined();
    expect(JSON.stringify(retried.body)).not.toContain('tenants-h1');
    const admin2 = await a.http().post(`/v1/jobs/${fits.body.job.id}/retry`).set(a.auth());
    expect(admin2.body.reasons).toEqual([expect.stringMatching(/^tenants-h1: not enough memory/)]);
  });
});

describe('CPU room: limits overcommitted across containers, up to 16 per core', () => {
  let a: ApiOnly;
  beforeAll(async () => {
    a = await startApiOnly('cpuroom');
  }, 60_000);
  afterAll(() => a?.close(), 30_000);

  it('refuses the create and the resize that would pass 16 × the host’s cores, saying how much is free', async () => {
    const create = (name: string, cpus: number) =>
      a
        .http()
        .post('/v1/containers')
        .set(a.auth())
        .send({ name, template: a.template, cpus, memoryBytes: 16 * MiB, start: false });
    // The host has 4 cores: 64 CPUs of limits in all, here 15 × 4 + 3 + 1.
    for (let i = 0; i < 15; i++) expect((await create(`full-${i}`, 4)).status).toBe(202);
    expect((await create('three', 3)).status).toBe(202);
    const one = await create('one', 1);
    expect(one.status).toBe(202);
    const before = await a.counts();
    const full = await create('over', 0.5);
    expectProblem(full, 503, 'NO_CAPACITY');
    expect(full.body.reasons).toEqual([expect.stringMatching(/not enough CPU \(0\.00 free\)$/)]);
    const grow = await a
      .http()
      .patch(`/v1/containers/${one.body.container.id}`)
      .set(a.auth())
      .send({ cpus: 2 });
    expectProblem(grow, 503, 'NO_CAPACITY');
    expect(grow.body.reasons).toEqual([expect.stringMatching(/not enough CPU \(0\.00 free\)$/)]);
    expect(await a.counts()).toEqual(before);
    // Shrinking needs no room.
    const shrink = await a
      .http()
      .patch(`/v1/containers/${one.body.container.id}`)
      .set(a.auth())
      .send({ cpus: 0.5 });
    expect(shrink.status).toBe(202);
  }, 60_000);
});

describe('resize holds: a growth takes its room on the host when accepted, not when it has run', () => {
  let a: ApiOnly;
  const GiB = 1024 * MiB;
  beforeAll(async () => {
    a = await startApiOnly('holds');
  }, 60_000);
  afterAll(() => a?.close(), 30_000);

  const create = (name: string, memoryBytes: number) =>
    a
      .http()
      .post('/v1/containers')
      .set(a.auth())
      .send({ name, template: a.template, cpus: 1, memoryBytes, start: false });
  const resize = (id: string, body: object) =>
    a.http().patch(`/v1/containers/${id}`).set(a.auth()).send(body);
  const reserved = async () => {
    const hosts = (await a.http().get('/v1/hosts').set(a.auth())).body as {
      id: string;
      reserved: { memoryBytes: number; cpus: number };
    }[];
    return hosts.find((h) => h.id === a.hostId)!.reserved;
  };

  it('counts pending growths, refuses what would overcommit them, and releases them when their jobs end', async () => {
    // The host has 8 GiB: 1 + 5 reserved, 2 free.
    const x = (await create('hold-x', 1 * GiB)).body.container.id as string;
    const fill = (await create('hold-fill', 5 * GiB)).body.container.id as string;
    expect((await reserved()).memoryBytes).toBe(6 * GiB);
    // x grows to 2.5 GiB: accepted, its job queued (no worker here), and the 1.5 GiB held at once.
    const grow = await resize(x, { memoryBytes: 2.5 * GiB });
    expect(grow.status).toBe(202);
    expect((await reserved()).memoryBytes).toBe(7.5 * GiB);
    // Before it has run, nothing else may take that room: a create, or a resize of another container.
    const before = await a.counts();
    const late = await create('hold-late', 1 * GiB);
    expectProblem(late, 503, 'NO_CAPACITY');
    expect(late.body.reasons).toEqual([expect.stringContaining('not enough memory (536870912 bytes free)')]);
    expectProblem(await resize(fill, { memoryBytes: 6 * GiB }), 503, 'NO_CAPACITY');
    expect(await a.counts()).toEqual(before);
    // A second growth of x counts from what the first holds: 0.5 GiB more.
    const more = await resize(x, { memoryBytes: 3 * GiB });
    expect(more.status).toBe(202);
    expect((await reserved()).memoryBytes).toBe(8 * GiB);
    // A shrink holds nothing more (its room is freed once it has run).
    const shrink = await resize(fill, { memoryBytes: 4 * GiB });
    expect(shrink.status).toBe(202);
    expect((await reserved()).memoryBytes).toBe(8 * GiB);
    // Cancelled, the larger growth releases its part; the first one still holds its own.
    const cancel = (job: string) => a.http().post(`/v1/jobs/${job}/cancel`).set(a.auth());
    expect((await cancel(more.body.job.id)).status).toBe(200);
    expect((await reserved()).memoryBytes).toBe(7.5 * GiB);
    expect((await cancel(grow.body.job.id)).status).toBe(200);
    expect((await reserved()).memoryBytes).toBe(6 * GiB);
    expect((await create('hold-now', 1 * GiB)).status).toBe(202);
    // A retried growth needs its room again: 1 GiB free, 1.5 asked → 503, the job stays cancelled.
    const retry = await a.http().post(`/v1/jobs/${grow.body.job.id}/retry`).set(a.auth());
    expectProblem(retry, 503, 'NO_CAPACITY');
    expect((await a.http().get(`/v1/jobs/${grow.body.job.id}`).set(a.auth())).body.state).toBe('cancelled');
    expect((await reserved()).memoryBytes).toBe(7 * GiB);
    // The shrink ends as the worker ends it (its row's new limits and the job's end in one transaction):
    // the room it frees is free.
    await a.ds.transaction(async (m) => {
      await m.query(`UPDATE containers SET memory_bytes = $2 WHERE id = $1`, [fill, 4 * GiB]);
      await m.query(`UPDATE jobs SET state = 'completed', finished_at = now() WHERE id = $1`, [
        shrink.body.job.id,
      ]);
    });
    expect((await reserved()).memoryBytes).toBe(6 * GiB);
    // Now the retry fits, and holds its room again.
    expect((await a.http().post(`/v1/jobs/${grow.body.job.id}/retry`).set(a.auth())).status).toBe(202);
    expect((await reserved()).memoryBytes).toBe(7.5 * GiB);
    expect((await cancel(grow.body.job.id)).status).toBe(200);
    expect((await reserved()).memoryBytes).toBe(6 * GiB);
  }, 60_000);

  it('resizes racing for the last room: exactly as many are accepted as fit', async () => {
    // Fill up to 0.75 GiB free, then four containers each try to grow by 0.5 GiB at once.
    const free = 8 * GiB - (await reserved()).memoryBytes;
    const ids: string[] = [];
    for (let i = 0; i < 4; i++) ids.push((await create(`race-${i}`, 64 * MiB)).body.container.id as string);
    const left = free - 4 * 64 * MiB;
    expect((await create('race-fill', left - 0.75 * GiB)).status).toBe(202);
    const answers = await Promise.all(ids.map((id) => resize(id, { memoryBytes: 64 * MiB + 0.5 * GiB })));
    expect(answers.map((r) => r.status).sort()).toEqual([202, 503, 503, 503]);
    expect((await reserved()).memoryBytes).toBe(8 * GiB - 0.25 * GiB);
  }, 60_000);

  it('accepts a shrink on a host already short of room (its memory lowered since), and refuses a growth there', async () => {
    const made = await create('short-x', 128 * MiB);
    expect(made.status).toBe(202);
    const id = made.body.container.id as string;
    // The host comes back with less memory than its containers reserve (e.g. a smaller VM).
    const [{ memory }] = await a.ds.query(`SELECT memory_bytes AS memory FROM hosts WHERE id = $1`, [
      a.hostId,
    ]);
    await a.ds.query(`UPDATE hosts SET memory_bytes = reserved_memory_bytes / 4 WHERE id = $1`, [a.hostId]);
    try {
      expect((await resize(id, { memoryBytes: 64 * MiB })).status).toBe(202);
      expectProblem(await resize(id, { memoryBytes: 256 * MiB }), 503, 'NO_CAPACITY');
    } finally {
      await a.ds.query(`UPDATE hosts SET memory_bytes = $2 WHERE id = $1`, [a.hostId, memory]);
    }
  }, 60_000);
});

describe('refusals no freed room ends: 409/422 with their own codes, 503 NO_CAPACITY only for room', () => {
  let a: ApiOnly;
  const GiB = 1024 * MiB;
  beforeAll(async () => {
    a = await startApiOnly('never');
  }, 60_000);
  afterAll(() => a?.close(), 30_000);

  const create = (body: object) =>
    a
      .http()
      .post('/v1/containers')
      .set(a.auth())
      .send({ name: 'never-x', template: a.template, cpus: 1, memoryBytes: 64 * MiB, start: false, ...body });
  async function refused(res: Promise<Response>, status: number, code: string): Promise<Response> {
    const before = await a.counts();
    const r = await res;
    expectProblem(r, status, code);
    expect(await a.counts()).toEqual(before);
    return r;
  }
  const template = async (name: string, states: [string, string][]) => {
    const [{ id }] = await a.ds.query(
      `INSERT INTO templates (name, source) VALUES ($1, 'tarball:/nonexistent.tar') RETURNING id`,
      [name],
    );
    for (const [host, state] of states)
      await a.ds.query(`INSERT INTO template_replicas (template_id, host_id, state) VALUES ($1, $2, $3)`, [
        id,
        host,
        state,
      ]);
  };

  it('a template whose import failed on every host, or still runs: 409 TEMPLATE_NOT_READY', async () => {
    await template('never-failed', [[a.hostId, 'failed']]);
    const failed = await refused(create({ template: 'never-failed' }), 409, 'TEMPLATE_NOT_READY');
    expect(failed.body.detail).toMatch(/not ready on any host: no import of it succeeded; import it again/);
    await template('never-importing', [[a.hostId, 'importing']]);
    const importing = await refused(create({ template: 'never-importing' }), 409, 'TEMPLATE_NOT_READY');
    expect(importing.body.detail).toMatch(/still running/);
    // Ready on another host only: not on the host chosen.
    const other = await a.addHost('never-h2');
    expectProblem(await create({ template: a.template, host: other }), 409, 'TEMPLATE_NOT_READY');
    // Ready on a host that is offline now: it may come back, so 503.
    const away = await a.addHost('never-h3', { stale: true });
    await template('never-away', [[away, 'ready']]);
    const offline = await refused(create({ template: 'never-away' }), 503, 'NO_CAPACITY');
    expect(offline.body.reasons).toContain('never-h3: offline');
  });

  it('larger than every online host: 422 (offline hosts do not count); one online host large enough: 503', async () => {
    const big = await a.addHost('never-big', { stale: true });
    await a.ds.query(`UPDATE hosts SET cpu_count = 16, memory_bytes = $2 WHERE id = $1`, [big, 64 * GiB]);
    const res = await refused(create({ cpus: 8, memoryBytes: 16 * GiB }), 422, 'EXCEEDS_HOST_CAPACITY');
    expect(res.body.detail).toMatch(/no online host is large enough/);
    expect(res.body.reasons).toEqual(expect.arrayContaining(['never-h1: has 4 CPUs']));
    expect(res.body.reasons.join()).not.toContain('never-big');
    // The chosen host is weighed whatever its state.
    const chosen = await refused(create({ cpus: 8, host: a.hostId }), 422, 'EXCEEDS_HOST_CAPACITY');
    expect(chosen.body.detail).toBe(
      'host never-h1 is too small for this container whatever it frees: has 4 CPUs',
    );
    // Back online, the large host could take it once it has the template: room, not size.
    await a.ds.query(`UPDATE hosts SET last_heartbeat_at = now() WHERE id = $1`, [big]);
    const later = await refused(create({ cpus: 8, memoryBytes: 16 * GiB }), 503, 'NO_CAPACITY');
    expect(later.body.reasons).toContain('never-big: template not available there');
    await a.ds.query(`UPDATE hosts SET last_heartbeat_at = now() - interval '1 hour' WHERE id = $1`, [big]);
  });

  it("a resize's answer shows the limits the container will have; GET the ones its host applies until the job has run", async () => {
    const made = await create({ name: 'never-resized', cpus: 0.5, memoryBytes: 64 * MiB });
    expect(made.status).toBe(202);
    const id = made.body.container.id as string;
    const before = made.body.container.resources;
    expect(before).toEqual({ cpus: 0.5, memoryBytes: 64 * MiB, diskBytes: 1024 * MiB, pidsMax: 512 });
    const resize = (body: object) => a.http().patch(`/v1/containers/${id}`).set(a.auth()).send(body);
    const first = await resize({ cpus: 0.3, pidsMax: 100 });
    expect(first.status).toBe(202);
    expect(first.body.container.resources).toEqual({ ...before, cpus: 0.3, pidsMax: 100 });
    // A second one, accepted before the first has run: the limits once both have run, in their order.
    const second = await resize({ memoryBytes: 128 * MiB, cpus: 0.4 });
    expect(second.body.container.resources).toEqual({
      ...before,
      cpus: 0.4,
      memoryBytes: 128 * MiB,
      pidsMax: 100,
    });
    // No worker here: the jobs have not run, and the container's row keeps what its host applies.
    expect((await a.http().get(`/v1/containers/${id}`).set(a.auth())).body.resources).toEqual(before);
    // A cancelled one no longer counts.
    expect((await a.http().post(`/v1/jobs/${second.body.job.id}/cancel`).set(a.auth())).status).toBe(200);
    const third = await resize({ pidsMax: 200 });
    expect(third.body.container.resources).toEqual({ ...before, cpus: 0.3, pidsMax: 200 });
  });
});

describe('admin key bootstrap', () => {
  const dbName = `berth_adminkey_${process.pid}`;
  let url: string;
  let dir: string;

  beforeAll(async () => {
    url = await createMigratedDatabase(dbName);
    dir = mkdtempSync(join(tmpdir(), 'berth-adminkey-'));
  }, 60_000);
  afterAll(async () => {
    await dropDatabase(dbName);
    rmSync(dir, { recursive: true, force: true });
  });

  const boot = async () => {
    const app = await createApiApp(
      testConfig({
        DATABASE_URL: url,
        ADMIN_KEY_FILE: join(dir, 'keys', 'admin.key'),
        BULLMQ_PREFIX: `adminkey-${process.pid}`,
      }),
    );
    await app.init();
    return app;
  };

  it('creates one admin key on a database without keys, writes it 0600, and it works; a second start creates none', async () => {
    const file = join(dir, 'keys', 'admin.key');
    const ds = createDataSource(url);
    await ds.initialize();
    try {
      expect(await ds.query(`SELECT count(*)::int AS n FROM api_keys`)).toEqual([{ n: 0 }]);
      let app = await boot();
      try {
        expect(existsSync(file)).toBe(true);
        expect(statSync(file).mode & 0o777).toBe(0o600);
        const token = readFileSync(file, 'utf8').trim();
        expect(token).toMatch(/^berth_[0-9a-f]{12}_[A-Za-z0-9_-]{43}$/);
        const keys = await ds.query(`SELECT name, prefix, scopes, secret_hash FROM api_keys`);
        expect(keys).toEqual([
          { name: 'admin', prefix: token.slice(6, 18), scopes: ['admin'], secret_hash: expect.any(String) },
        ]);
        // Stored hashed: the secret is nowhere in the row.
        expect(JSON.stringify(keys)).not.toContain(token.slice(19));
        const ok = await request(app.getHttpServer())
          .get('/v1/hosts')
          .set({ Authorization: `Bearer ${token}` });
        expect(ok.status).toBe(200);
        const audit = await ds.query(`SELECT action FROM audit_events WHERE subject_type = 'api_key'`);
        expect(audit).toEqual([{ action: 'api_key.created' }]);
      } finally {
        await app.close();
      }
      const firstToken = readFileSync(file, 'utf8');
      app = await boot();
      await app.close();
      expect(await ds.query(`SELECT count(*)::int AS n FROM api_keys`)).toEqual([{ n: 1 }]);
      expect(readFileSync(file, 'utf8')).toBe(firstToken);
    } finally {
      await ds.destroy();
    }
  }, 60_000);
});
