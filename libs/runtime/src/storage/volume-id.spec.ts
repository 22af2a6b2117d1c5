import { RuntimeError } from '../common/errors';
import { validateVolumeId } from './volume-id';
import { validateDriverRoot } from './volume-files';

describe('validateVolumeId', () => {
  it.each(['a', '0', 'debian-12-web', 'web_1.snap', 'x'.repeat(128), 'a.b-c_d'])('accepts %s', (id) => {
    expect(validateVolumeId(id, 'container')).toBe(id);
  });

  it.each([
    ['empty', ''],
    ['leading dot', '.hidden'],
    ['leading dash', '-rf'],
    ['dot-dot', 'a..b'],
    ['slash', 'a/b'],
    ['traversal', '../etc'],
    ['upper case', 'Web'],
    ['space', 'a b'],
    ['too long', 'x'.repeat(129)],
    ['NUL', 'a\0b'],
    ['newline', 'a\n'],
  ])('rejects %s with INVALID_NAME', (_label, id) => {
    expect(() => validateVolumeId(id, 'template')).toThrow(RuntimeError);
    try {
      validateVolumeId(id, 'template');
    } catch (error) {
      expect((error as RuntimeError).code).toBe('INVALID_NAME');
      expect((error as RuntimeError).context).toMatchObject({ kind: 'template' });
    }
  });

  it('rejects non-strings', () => {
    expect(() => validateVolumeId(42, 'snapshot')).toThrow(expect.objectContaining({ code: 'INVALID_NAME' }));
  });
});

describe('validateDriverRoot', () => {
  it('accepts an absolute normalized path', () => {
    expect(validateDriverRoot('/var/lib/berth/storage/btrfs')).toBe('/var/lib/berth/storage/btrfs');
  });

  it.each(['relative/dir', '/', '/a/../b', '/a,b', '/a:b', '/a b', '/a\\b'])(
    'rejects %s with INVALID_PATH',
    (root) => {
      expect(() => validateDriverRoot(root)).toThrow(expect.objectContaining({ code: 'INVALID_PATH' }));
    },
  );
});
