import { BadRequestException, HttpStatus, type ArgumentsHost } from '@nestjs/common';
import { generateApiKey, parseApiKey, secretMatches } from '../src/auth/api-keys';
import { ApiError } from '../src/common/api-error';
import { cursorScope, decodeCursor, encodeCursor } from '../src/common/cursor';
import { ProblemFilter } from '../src/common/problem.filter';

describe('cursors', () => {
  const at = '2025-01-02T03:04:05.123456Z';
  const id = '6f1c2a34-5b6d-4e7f-8a9b-0c1d2e3f4a5b';
  const scope = cursorScope('jobs', ['state = $1'], ['failed']);

  it('round-trip the exact microsecond timestamp and id', () => {
    expect(decodeCursor(encodeCursor(at, id, scope), scope)).toEqual({ at, id });
  });

  it('are refused on another list or with other filters; the page size is not part of the scope', () => {
    const refused = expect.objectContaining({ status: 400, code: 'INVALID_CURSOR' });
    const cursor = encodeCursor(at, id, scope);
    expect(() => decodeCursor(cursor, cursorScope('containers', ['state = $1'], ['failed']))).toThrow(
      refused,
    );
    expect(() => decodeCursor(cursor, cursorScope('jobs', ['state = $1'], ['completed']))).toThrow(refused);
    expect(() => decodeCursor(cursor, cursorScope('jobs', [], []))).toThrow(refused);
    expect(cursorScope('jobs', ['state = $1'], ['failed'])).toBe(scope);
    // Written before cursors had a scope: taken as it is.
    expect(decodeCursor(Buffer.from(JSON.stringify([at, id])).toString('base64url'), scope)).toEqual({
      at,
      id,
    });
  });

  it.each([
    '',
    'x',
    Buffer.from('[1,2]').toString('base64url'),
    Buffer.from('["2025-01-01","a"]').toString('base64url'),
    Buffer.from(JSON.stringify([at, id, 'short'])).toString('base64url'),
    Buffer.from(JSON.stringify([at, id, 'a'.repeat(16), 'more'])).toString('base64url'),
  ])('refuse %p with 400 INVALID_CURSOR', (c) => {
    expect(() => decodeCursor(c, scope)).toThrow(
      expect.objectContaining({ status: 400, code: 'INVALID_CURSOR' }),
    );
  });
});

describe('API keys', () => {
  it('parse their own shape and match only their own secret', () => {
    const k = generateApiKey();
    const parsed = parseApiKey(k.token)!;
    expect(parsed.prefix).toBe(k.prefix);
    expect(secretMatches(parsed.secret, k.secretHash)).toBe(true);
    expect(secretMatches(parseApiKey(generateApiKey().token)!.secret, k.secretHash)).toBe(false);
    expect(k.secretHash).not.toContain(parsed.secret);
  });

  it.each([
    '',
    'berth_',
    `berth_ABCDEF123456_${'a'.repeat(43)}`,
    `berth_abcdef123456_${'a'.repeat(42)}`,
    'Bearer x',
  ])('reject the malformed token %p', (t) => expect(parseApiKey(t)).toBeNull());
});

describe('ProblemFilter', () => {
  function answer(e: unknown) {
    const res = {
      statusCode: 0,
      headersSent: false,
      contentType: '',
      body: '',
      status(s: number) {
        this.statusCode = s;
        return this;
      },
      type(t: string) {
        this.contentType = t;
        return this;
      },
      send(b: string) {
        this.body = b;
        return this;
      },
    };
    const host = {
      switchToHttp: () => ({ getResponse: () => res, getRequest: () => ({ originalUrl: '/v1/x' }) }),
    } as unknown as ArgumentsHost;
    new ProblemFilter().catch(e, host);
    return { status: res.statusCode, type: res.contentType, body: JSON.parse(res.body) };
  }

  it('answers an ApiError with its status, code and extra fields', () => {
    expect(
      answer(new ApiError(HttpStatus.SERVICE_UNAVAILABLE, 'NO_CAPACITY', 'full', { reasons: ['h1: full'] })),
    ).toEqual({
      status: 503,
      type: 'application/problem+json',
      body: {
        type: 'about:blank',
        title: 'NO_CAPACITY',
        status: 503,
        code: 'NO_CAPACITY',
        detail: 'full',
        reasons: ['h1: full'],
        instance: '/v1/x',
      },
    });
  });

  it('lists each validation error under errors, with the code VALIDATION_FAILED', () => {
    const r = answer(new BadRequestException(['name must be a DNS label', 'property x should not exist']));
    expect(r.status).toBe(400);
    expect(r.body).toMatchObject({
      code: 'VALIDATION_FAILED',
      errors: ['name must be a DNS label', 'property x should not exist'],
      detail: 'name must be a DNS label; property x should not exist',
    });
  });

  it('hides the internals of an unknown error behind a 500 INTERNAL', () => {
    const r = answer(new Error('password=hunter2 at /srv/secret'));
    expect(r).toMatchObject({ status: 500, body: { code: 'INTERNAL', detail: 'internal error' } });
    expect(JSON.stringify(r.body)).not.toContain('hunter2');
  });
});
