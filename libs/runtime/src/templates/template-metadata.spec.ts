import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { readTemplateMetadata, TemplateMetadata, writeTemplateMetadata } from './template-metadata';

describe('template metadata', () => {
  let dir: string;
  const meta: TemplateMetadata = {
    name: 'busybox',
    source: { kind: 'busybox', busyboxPath: '/bin/busybox' },
    builder: 'berth-busybox@1',
    createdAt: '2026-11-25T03:00:00.000Z',
    sizeBytes: 1983805,
    files: 303,
  };
  beforeEach(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'berth-meta-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('round-trips through template.json, written atomically (no temp file left)', async () => {
    await writeTemplateMetadata(path.join(dir, 't'), { ...meta, shiftedUid: 100000 });
    expect(await readTemplateMetadata(path.join(dir, 't'))).toEqual({ ...meta, shiftedUid: 100000 });
    expect(await readdir(path.join(dir, 't'))).toEqual(['template.json']);
    expect(JSON.parse(await readFile(path.join(dir, 't', 'template.json'), 'utf8')).name).toBe('busybox');
  });

  it('returns null when there is no metadata', async () => {
    expect(await readTemplateMetadata(dir)).toBeNull();
  });

  it.each<[string, unknown]>([
    ['not JSON', '{'],
    ['a bad name', { ...meta, name: '../x' }],
    ['a bad size', { ...meta, sizeBytes: -1 }],
    ['a bad date', { ...meta, createdAt: 'yesterday' }],
    ['an unknown source', { ...meta, source: { kind: 'ftp' } }],
  ])('refuses %s', async (_label, content) => {
    await writeFile(
      path.join(dir, 'template.json'),
      typeof content === 'string' ? content : JSON.stringify(content),
    );
    await expect(readTemplateMetadata(dir)).rejects.toMatchObject({
      code: expect.stringMatching(/INVALID_/),
    });
  });
});
