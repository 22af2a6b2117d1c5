import { readTarEntries, TarEntry } from './tar-reader';

/** Builds one 512-byte ustar header with a valid checksum. */
function header(fields: {
  name: string;
  type?: string;
  size?: number;
  linkname?: string;
  prefix?: string;
  magic?: string;
  devmajor?: number;
  devminor?: number;
  badChecksum?: boolean;
}): Buffer {
  const h = Buffer.alloc(512);
  h.write(fields.name, 0, 100, 'utf8');
  h.write('0000755\0', 100, 'latin1');
  h.write('0000000\0', 108, 'latin1');
  h.write('0000000\0', 116, 'latin1');
  h.write(`${(fields.size ?? 0).toString(8).padStart(11, '0')}\0`, 124, 'latin1');
  h.write('00000000000\0', 136, 'latin1');
  h.write(fields.type ?? '0', 156, 'latin1');
  h.write(fields.linkname ?? '', 157, 100, 'utf8');
  h.write(fields.magic ?? 'ustar\x0000', 257, 'latin1');
  h.write(`${(fields.devmajor ?? 0).toString(8).padStart(7, '0')}\0`, 329, 'latin1');
  h.write(`${(fields.devminor ?? 0).toString(8).padStart(7, '0')}\0`, 337, 'latin1');
  h.write(fields.prefix ?? '', 345, 155, 'utf8');
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (const b of h) sum += b;
  h.write(`${(fields.badChecksum ? sum + 1 : sum).toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
  return h;
}

const pad = (b: Buffer): Buffer => Buffer.concat([b, Buffer.alloc((512 - (b.length % 512)) % 512)]);
const END = Buffer.alloc(1024);

function paxRecord(key: string, value: string): string {
  const body = ` ${key}=${value}\n`;
  let len = body.length + 1;
  while (`${len}${body}`.length !== len) len += 1;
  return `${len}${body}`;
}

async function entries(...blocks: Buffer[]): Promise<TarEntry[]> {
  const data = Buffer.concat(blocks);
  // Feed in odd-sized chunks to exercise the streaming reader.
  async function* chunks(): AsyncGenerator<Buffer> {
    for (let i = 0; i < data.length; i += 300) yield data.subarray(i, i + 300);
  }
  const out: TarEntry[] = [];
  for await (const e of readTarEntries(chunks())) out.push(e);
  return out;
}

describe('readTarEntries', () => {
  it('reads members, skips file data and honours the ustar prefix', async () => {
    const got = await entries(
      header({ name: 'etc/', type: '5' }),
      header({ name: 'etc/hostname', size: 5 }),
      pad(Buffer.from('box1\n')),
      header({ name: 'bin', prefix: 'usr', type: '5' }),
      header({ name: 'sh', type: '2', linkname: '/bin/busybox' }),
      header({ name: 'dev/null', type: '3', devmajor: 1, devminor: 3 }),
      END,
    );
    expect(got.map((e) => [e.name, e.type, e.linkname])).toEqual([
      ['etc/', 'directory', ''],
      ['etc/hostname', 'file', ''],
      ['usr/bin', 'directory', ''],
      ['sh', 'symlink', '/bin/busybox'],
      ['dev/null', 'char', ''],
    ]);
    expect(got[1].size).toBe(5);
    expect(got[4]).toMatchObject({ devmajor: 1, devminor: 3, mode: 0o755 });
  });

  it('applies GNU long names and pax path/linkpath overrides (what the extractor will use)', async () => {
    const long = `${'d/'.repeat(80)}file`;
    const longData = pad(Buffer.from(`${long}\0`));
    const pax = Buffer.from(paxRecord('path', '../escape') + paxRecord('linkpath', '/etc/shadow'));
    const got = await entries(
      header({ name: '././@LongLink', type: 'L', size: long.length + 1, magic: 'ustar  \0' }),
      longData,
      header({ name: 'short', magic: 'ustar  \0' }),
      header({ name: 'PaxHeaders/x', type: 'x', size: pax.length }),
      pad(pax),
      header({ name: 'innocent', type: '1', linkname: 'innocent-target' }),
      END,
    );
    expect(got[0].name).toBe(long);
    expect(got[1]).toMatchObject({ name: '../escape', type: 'hardlink', linkname: '/etc/shadow' });
  });

  it.each<[string, Buffer[], RegExp]>([
    ['a bad checksum', [header({ name: 'a', badChecksum: true }), END], /checksum/],
    ['an unknown type', [header({ name: 'a', type: 'V' }), END], /unsupported tar entry type 'V'/],
    ['a GNU sparse member', [header({ name: 'a', type: 'S' }), END], /unsupported tar entry type 'S'/],
    [
      'a symlink that carries data',
      [header({ name: 'a', type: '2', size: 512 }), Buffer.alloc(512), END],
      /carries data/,
    ],
    ['a truncated file body', [header({ name: 'a', size: 4096 }), Buffer.alloc(512)], /truncated/],
    ['an empty stream', [], /empty/],
    [
      'pax sparse keys',
      [
        header({ name: 'x', type: 'x', size: paxRecord('GNU.sparse.major', '1').length }),
        pad(Buffer.from(paxRecord('GNU.sparse.major', '1'))),
        header({ name: 'a' }),
        END,
      ],
      /sparse/,
    ],
  ])('refuses %s with UNSAFE_ARCHIVE', async (_label, blocks, message) => {
    await expect(entries(...blocks)).rejects.toMatchObject({
      code: 'UNSAFE_ARCHIVE',
      message: expect.stringMatching(message),
    });
  });

  it('stops at the first zero block like GNU tar (members after it are never extracted)', async () => {
    const got = await entries(header({ name: 'a' }), Buffer.alloc(512), header({ name: '/etc/evil' }), END);
    expect(got.map((e) => e.name)).toEqual(['a']);
  });

  it('reads what follows the end of the archive only up to a bound (an endless source is refused)', async () => {
    let yielded = 0;
    async function* endless(): AsyncGenerator<Buffer> {
      yield Buffer.concat([header({ name: 'a' }), END]);
      const zeros = Buffer.alloc(1 << 20);
      for (;;) {
        yielded += zeros.length;
        yield zeros;
      }
    }
    const read = async () => {
      for await (const e of readTarEntries(endless())) void e;
    };
    await expect(read()).rejects.toMatchObject({ code: 'UNSAFE_ARCHIVE' });
    expect(yielded).toBeLessThanOrEqual(32 << 20);
    // The usual padding (GNU tar's 10 KiB records) is fine.
    expect((await entries(header({ name: 'a' }), END, Buffer.alloc(9 * 1024))).map((e) => e.name)).toEqual([
      'a',
    ]);
  });

  it('does not quote a malformed header field: a file that is no archive keeps its content to itself', async () => {
    const h = Buffer.alloc(512);
    // /etc/shadow-like lines over the whole header, its checksum field (148-156) included.
    h.write('daemon:*:19000:0:99999:7:::\n'.repeat(18), 0, 'latin1');
    const err = await entries(h, END).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'UNSAFE_ARCHIVE' });
    expect((err as Error).message).toMatch(/malformed checksum field/);
    expect((err as Error).message).not.toMatch(/daemon|99999|:7|19000/);
  });
});
