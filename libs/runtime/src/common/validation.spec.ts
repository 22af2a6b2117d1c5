import {
  assertContainerName,
  assertCpus,
  assertPidsMax,
  assertTemplateName,
  assertWithinHost,
  parseSize,
  PIDS_MAX_LIMIT,
  safeJoin,
} from './validation';

const code = (fn: () => unknown): string | undefined => {
  try {
    fn();
  } catch (e) {
    return (e as { code?: string }).code;
  }
  return undefined;
};

describe('assertContainerName', () => {
  it.each(['a', 'web-1', '0', 'a'.repeat(63), 'x9-y8'])('accepts DNS label %s', (n) => {
    expect(code(() => assertContainerName(n))).toBeUndefined();
  });
  it.each([
    '',
    '-a',
    'a-',
    'A',
    'web_1',
    'web.1',
    'a'.repeat(64),
    '..',
    '.',
    'a/b',
    'a b',
    'é',
    'a\0',
    'a\n',
    ' a',
  ])('rejects %j with INVALID_NAME', (n) => {
    expect(code(() => assertContainerName(n))).toBe('INVALID_NAME');
  });
  it.each([undefined, null, 42, {}, ['a']])('rejects non-string %p', (n) => {
    expect(code(() => assertContainerName(n))).toBe('INVALID_NAME');
  });
});

describe('assertTemplateName', () => {
  it.each(['busybox', 'debian-12.7-web', 'alpine_3.20', 'a', 'a'.repeat(63)])('accepts %s', (n) => {
    expect(code(() => assertTemplateName(n))).toBeUndefined();
  });
  it.each(['', '.', '..', '.hidden', 'a..b', 'a.', '_a', 'A', 'a/b', '../x', 'a'.repeat(64), 'a\0b', 'a b'])(
    'rejects %j with INVALID_NAME',
    (n) => {
      expect(code(() => assertTemplateName(n))).toBe('INVALID_NAME');
    },
  );
});

describe('parseSize', () => {
  it.each<[string | number, number]>([
    [1, 1],
    [4096, 4096],
    ['4096', 4096],
    ['10B', 10],
    ['1K', 1024],
    ['1k', 1024],
    ['1KiB', 1024],
    ['256M', 256 * 2 ** 20],
    ['512MiB', 512 * 2 ** 20],
    ['512mb', 512 * 2 ** 20],
    ['1G', 2 ** 30],
    ['1GB', 2 ** 30],
    [' 2 G ', 2 * 2 ** 30],
    ['1.5G', 1.5 * 2 ** 30],
    ['0.5K', 512],
    ['1T', 2 ** 40],
    ['7P', 7 * 2 ** 50],
    [Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER],
    [String(Number.MAX_SAFE_INTEGER), Number.MAX_SAFE_INTEGER],
  ])('parses %j as %d bytes', (input, bytes) => {
    expect(parseSize(input)).toBe(bytes);
  });
  it.each<unknown>([
    0,
    '0',
    '0M',
    '0.0G',
    -1,
    '-1M',
    '+1M',
    1.5,
    NaN,
    Infinity,
    -Infinity,
    Number.MAX_SAFE_INTEGER + 1,
    '8E',
    '9007199254740992',
    '99999999999999999999999999999G',
    '0.1K',
    '1.5',
    '',
    ' ',
    'M',
    '1X',
    '1 M B',
    '1MM',
    '1e9',
    '0x10',
    '1,000',
    '1M; rm -rf /',
    '½G',
    '１G',
    null,
    undefined,
    {},
    [],
    true,
  ])('rejects %p with INVALID_SIZE', (input) => {
    expect(code(() => parseSize(input))).toBe('INVALID_SIZE');
  });
});

describe('assertWithinHost', () => {
  it('accepts up to and including the host amount', () => {
    expect(code(() => assertWithinHost(1024, 1024))).toBeUndefined();
    expect(code(() => assertWithinHost(1, 1024))).toBeUndefined();
  });
  it.each([1025, 0, -5, 1.5, NaN, Infinity])('rejects %p with INVALID_SIZE', (b) => {
    expect(code(() => assertWithinHost(b, 1024))).toBe('INVALID_SIZE');
  });
  it('names the host amount in the message', () => {
    expect(() => assertWithinHost(2048, 1024, 'memory')).toThrow(
      /memory 2048 bytes exceeds the host's 1024 bytes/,
    );
  });
});

describe('assertCpus', () => {
  it.each([0.5, 1, 2, 0.01])('accepts %p on a 2-core host', (n) => {
    expect(code(() => assertCpus(n, 2))).toBeUndefined();
  });
  it.each<unknown>([0, -1, 2.01, 3, NaN, Infinity, 0.001, '1', null, undefined])('rejects %p', (n) => {
    expect(code(() => assertCpus(n, 2))).toBe('INVALID_ARGUMENT');
  });
  it("defaults to this machine's core count", () => {
    expect(code(() => assertCpus(1))).toBeUndefined();
    expect(code(() => assertCpus(100_000))).toBe('INVALID_ARGUMENT');
  });
});

describe('assertPidsMax', () => {
  it.each([1, 64, PIDS_MAX_LIMIT])('accepts %p', (n) => {
    expect(code(() => assertPidsMax(n))).toBeUndefined();
  });
  it.each<unknown>([0, -1, 1.5, PIDS_MAX_LIMIT + 1, NaN, Infinity, '10', 'max', null])('rejects %p', (n) => {
    expect(code(() => assertPidsMax(n))).toBe('INVALID_ARGUMENT');
  });
});

describe('safeJoin', () => {
  it('joins relative parts under the root', () => {
    expect(safeJoin('/var/lib/berth', 'containers', 'web-1', 'config.json')).toBe(
      '/var/lib/berth/containers/web-1/config.json',
    );
    expect(safeJoin('/var/lib/berth/', 'a/b', './c')).toBe('/var/lib/berth/a/b/c');
    expect(safeJoin('/var/lib/berth')).toBe('/var/lib/berth');
    expect(safeJoin('/', 'etc')).toBe('/etc');
  });
  it.each([['..'], ['a/../../etc'], ['a', '..'], ['a/..'], ['/etc/passwd'], ['a', '/etc'], ['a\0b'], ['\0']])(
    'rejects parts %j with INVALID_PATH',
    (...parts) => {
      expect(code(() => safeJoin('/var/lib/berth', ...parts))).toBe('INVALID_PATH');
    },
  );
  it('rejects a relative or NUL-bearing root and non-string parts', () => {
    expect(code(() => safeJoin('var/lib', 'a'))).toBe('INVALID_PATH');
    expect(code(() => safeJoin('/var\0', 'a'))).toBe('INVALID_PATH');
    expect(code(() => safeJoin('/var', 5 as unknown as string))).toBe('INVALID_PATH');
  });
  it('does not confuse a sibling with the same prefix for the inside', () => {
    // '..' is refused outright, so build the sibling case through the root itself.
    expect(safeJoin('/data/root', 'x..y')).toBe('/data/root/x..y');
    expect(safeJoin('/data/root', '...')).toBe('/data/root/...');
  });
});
