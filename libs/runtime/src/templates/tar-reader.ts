import { RuntimeError } from '../common/errors';

/**
 * A minimal streaming tar header reader (ustar, GNU long names, pax extended headers). It reads headers
 * only and skips file data, so an archive of any size is validated in constant memory before anything is
 * extracted. It interprets names the way GNU tar does for the formats it accepts; anything it does not
 * understand is refused rather than guessed (a parser that disagrees with the extractor is an attack
 * surface).
 */

export type TarEntryType = 'file' | 'hardlink' | 'symlink' | 'char' | 'block' | 'directory' | 'fifo';

export interface TarEntry {
  /** Member name as stored (after GNU long-name / pax `path` overrides), not normalised. */
  name: string;
  type: TarEntryType;
  /** Link target for hardlinks and symlinks ('' otherwise). */
  linkname: string;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  devmajor: number;
  devminor: number;
}

const BLOCK = 512;

const TYPES: Record<string, TarEntryType> = {
  '0': 'file',
  '\0': 'file',
  '7': 'file', // contiguous file: a regular file for every extractor
  '1': 'hardlink',
  '2': 'symlink',
  '3': 'char',
  '4': 'block',
  '5': 'directory',
  '6': 'fifo',
};

function unsafe(message: string, context: Record<string, unknown> = {}): RuntimeError {
  return new RuntimeError('UNSAFE_ARCHIVE', message, context);
}

/** Reads exact byte counts from an async stream of chunks. */
class ByteReader {
  private buffered: Buffer[] = [];
  private length = 0;
  private done = false;
  private readonly it: AsyncIterator<Buffer | string>;

  constructor(source: AsyncIterable<Buffer | string>) {
    this.it = source[Symbol.asyncIterator]();
  }

  private async fill(n: number): Promise<void> {
    while (this.length < n && !this.done) {
      const next = await this.it.next();
      if (next.done) {
        this.done = true;
        break;
      }
      const chunk = typeof next.value === 'string' ? Buffer.from(next.value) : next.value;
      this.buffered.push(chunk);
      this.length += chunk.length;
    }
  }

  /** Exactly n bytes, or null at a clean end of stream; throws on a partial read. */
  async read(n: number): Promise<Buffer | null> {
    await this.fill(n);
    if (this.length === 0) return null;
    if (this.length < n) throw unsafe('archive is truncated');
    const all = this.buffered.length === 1 ? this.buffered[0] : Buffer.concat(this.buffered);
    const out = all.subarray(0, n);
    const rest = all.subarray(n);
    this.buffered = rest.length > 0 ? [rest] : [];
    this.length = rest.length;
    return out;
  }

  /** Skips n bytes; throws when the stream ends first. */
  async skip(n: number): Promise<void> {
    let left = n;
    while (left > 0) {
      if (this.length === 0) {
        await this.fill(1);
        if (this.length === 0) throw unsafe('archive is truncated');
      }
      const head = this.buffered[0];
      if (head.length <= left) {
        left -= head.length;
        this.length -= head.length;
        this.buffered.shift();
      } else {
        this.buffered[0] = head.subarray(left);
        this.length -= left;
        left = 0;
      }
    }
  }

  /** Releases the source (a stream is destroyed) when reading stops early. */
  async close(): Promise<void> {
    await this.it.return?.();
  }

  /**
   * Consumes the rest of the stream (so a decompressor piping into us can finish), up to `maxBytes`: past
   * the end of the archive there is only its padding, and an endless source (a device, a decompression
   * bomb of zeros) must not be read for ever.
   */
  async drain(maxBytes: number): Promise<void> {
    this.buffered = [];
    this.length = 0;
    let read = 0;
    while (!this.done) {
      const next = await this.it.next();
      if (next.done) this.done = true;
      else if ((read += (next.value as Buffer | string).length) > maxBytes)
        throw unsafe(`more than ${maxBytes} bytes after the end of the archive`);
    }
  }
}

function cString(buf: Buffer, start: number, end: number): string {
  const slice = buf.subarray(start, end);
  const nul = slice.indexOf(0);
  return (nul === -1 ? slice : slice.subarray(0, nul)).toString('utf8');
}

/** Octal (NUL/space padded) or GNU base-256 (high bit set) numeric field. */
function numeric(buf: Buffer, start: number, end: number, field: string): number {
  const slice = buf.subarray(start, end);
  if (slice[0] & 0x80) {
    if (slice[0] & 0x40) throw unsafe(`negative ${field} in tar header`);
    let value = BigInt(slice[0] & 0x3f);
    for (let i = 1; i < slice.length; i++) value = (value << 8n) | BigInt(slice[i]);
    if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw unsafe(`${field} too large in tar header`);
    return Number(value);
  }
  const text = slice
    .toString('latin1')
    .replace(/[\0 ]+$/g, '')
    .replace(/^ +/, '');
  if (text === '') return 0;
  // The field's bytes stay out of the message: a file that is no archive at all (any file the worker
  // can read) would show its content in the job's error.
  if (!/^[0-7]+$/.test(text))
    throw unsafe(`malformed ${field} field in tar header: not a tar archive or corrupt`);
  const value = parseInt(text, 8);
  if (!Number.isSafeInteger(value)) throw unsafe(`${field} too large in tar header`);
  return value;
}

function checksumOk(header: Buffer): boolean {
  const stored = numeric(header, 148, 156, 'checksum');
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < BLOCK; i++) {
    const b = i >= 148 && i < 156 ? 0x20 : header[i];
    unsigned += b;
    signed += b > 127 ? b - 256 : b;
  }
  // Historic writers summed signed chars; GNU tar accepts both.
  return stored === unsigned || stored === signed;
}

/** Parses pax extended header records: `<len> <key>=<value>\n`. */
function parsePax(data: Buffer): Map<string, string> {
  const out = new Map<string, string>();
  let pos = 0;
  while (pos < data.length) {
    if (data[pos] === 0) break;
    const space = data.indexOf(0x20, pos);
    if (space === -1) throw unsafe('malformed pax header');
    const len = Number(data.subarray(pos, space).toString('latin1'));
    if (!Number.isSafeInteger(len) || len <= space - pos || pos + len > data.length) {
      throw unsafe('malformed pax header record length');
    }
    const record = data.subarray(space + 1, pos + len);
    if (record[record.length - 1] !== 0x0a) throw unsafe('malformed pax header record');
    const text = record.subarray(0, record.length - 1).toString('utf8');
    const eq = text.indexOf('=');
    if (eq <= 0) throw unsafe('malformed pax header record');
    out.set(text.slice(0, eq), text.slice(eq + 1));
    pos += len;
  }
  return out;
}

/** Pax keys that change how an entry is extracted in ways this reader does not model: refused. */
function refusePaxKeys(pax: Map<string, string>, where: string): void {
  for (const key of pax.keys()) {
    if (key.startsWith('GNU.sparse')) throw unsafe(`sparse files are not supported (${where})`, { key });
  }
}

const MAX_META_SIZE = 1 << 20; // long names and pax headers larger than 1 MiB are not real archives
/** What may follow the end-of-archive blocks (tar pads to its record size: 10 KiB by default). */
const MAX_TRAILER_SIZE = 16 << 20;

/**
 * Yields every member of a tar stream in order (metadata entries like GNU long names and pax headers are
 * folded into the member they describe). Stops at the first all-zero block, as GNU tar does without -i.
 * @throws RuntimeError UNSAFE_ARCHIVE for a corrupt, truncated or unsupported archive (bad checksum,
 *   unknown entry type, sparse or multi-volume members).
 */
export async function* readTarEntries(source: AsyncIterable<Buffer | string>): AsyncGenerator<TarEntry> {
  const reader = new ByteReader(source);
  try {
    yield* entriesOf(reader);
  } finally {
    // A consumer that stops early (a refused entry) must not leave the source stream half read.
    await reader.close();
  }
}

async function* entriesOf(reader: ByteReader): AsyncGenerator<TarEntry> {
  let longName: string | undefined;
  let longLink: string | undefined;
  let pax: Map<string, string> | undefined;
  let globalPax = new Map<string, string>();
  let sawHeader = false;
  for (;;) {
    const header = await reader.read(BLOCK);
    if (header === null) {
      if (!sawHeader) throw unsafe('archive is empty');
      break; // no end-of-archive blocks: GNU tar accepts that with a warning
    }
    if (header.every((b) => b === 0)) {
      await reader.drain(MAX_TRAILER_SIZE);
      break;
    }
    sawHeader = true;
    if (!checksumOk(header)) throw unsafe('tar header checksum mismatch: not a tar archive or corrupt');
    const flag = String.fromCharCode(header[156]);
    const magic = header.subarray(257, 263).toString('latin1');
    let size = numeric(header, 124, 136, 'size');

    if (flag === 'L' || flag === 'K' || flag === 'x' || flag === 'g') {
      if (size > MAX_META_SIZE) throw unsafe(`oversized ${flag} metadata header`);
      const padded = Math.ceil(size / BLOCK) * BLOCK;
      const data = (await reader.read(padded)) ?? Buffer.alloc(0);
      if (data.length < padded) throw unsafe('archive is truncated');
      const body = data.subarray(0, size);
      if (flag === 'L') longName = cString(body, 0, body.length);
      else if (flag === 'K') longLink = cString(body, 0, body.length);
      else if (flag === 'x') {
        pax = parsePax(body);
        refusePaxKeys(pax, 'pax header');
      } else {
        const g = parsePax(body);
        refusePaxKeys(g, 'global pax header');
        if (g.has('path') || g.has('linkpath')) throw unsafe('global pax path/linkpath is not supported');
        globalPax = new Map([...globalPax, ...g]);
      }
      continue;
    }

    const type = TYPES[flag];
    if (!type) {
      throw unsafe(`unsupported tar entry type '${flag.replace(/[^\x20-\x7e]/g, '?')}'`, {
        typeflag: header[156],
      });
    }
    let name = cString(header, 0, 100);
    // The prefix field exists in POSIX ustar only; old GNU headers use those bytes for other things.
    if (magic === 'ustar\0') {
      const prefix = cString(header, 345, 500);
      if (prefix !== '') name = `${prefix}/${name}`;
    }
    let linkname = cString(header, 157, 257);
    const fields = new Map([...globalPax, ...(pax ?? [])]);
    if (longName !== undefined) name = longName;
    if (longLink !== undefined) linkname = longLink;
    if (fields.has('path')) name = fields.get('path') as string;
    if (fields.has('linkpath')) linkname = fields.get('linkpath') as string;
    if (fields.has('size')) {
      const s = fields.get('size') as string;
      if (!/^\d+$/.test(s) || !Number.isSafeInteger(Number(s))) throw unsafe('malformed pax size');
      size = Number(s);
    }
    const uid = fields.has('uid') ? Number(fields.get('uid')) : numeric(header, 108, 116, 'uid');
    const gid = fields.has('gid') ? Number(fields.get('gid')) : numeric(header, 116, 124, 'gid');
    const isUstar = magic.startsWith('ustar');
    const entry: TarEntry = {
      name,
      type,
      linkname,
      mode: numeric(header, 100, 108, 'mode') & 0o7777,
      uid,
      gid,
      size,
      devmajor: isUstar ? numeric(header, 329, 337, 'devmajor') : 0,
      devminor: isUstar ? numeric(header, 337, 345, 'devminor') : 0,
    };
    longName = undefined;
    longLink = undefined;
    pax = undefined;
    // Only regular files carry data. Extractors disagree on whether other members' size fields mean data
    // follows, and a disagreement would let the extractor see headers this reader never checked: refuse.
    if (type !== 'file' && size !== 0) {
      throw unsafe(`${type} entry ${JSON.stringify(name)} carries data`, { entry: name });
    }
    // Handed over before its data is skipped: a consumer that refuses it (its size past a bound: a
    // decompression bomb) stops before the data is read.
    yield entry;
    await reader.skip(Math.ceil(size / BLOCK) * BLOCK);
  }
}
