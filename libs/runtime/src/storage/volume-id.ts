import { RuntimeError } from '../common/errors';

/** Template ids, container ids and snapshot names: lower-case, no slashes, no leading dot, no `..`. */
export const VOLUME_ID_PATTERN = /^[a-z0-9][a-z0-9_.-]{0,127}$/;

export type VolumeIdKind = 'template' | 'container' | 'snapshot';

/**
 * Throws INVALID_NAME unless `id` is safe to use as one path component under the driver's root. Checked
 * before any I/O so a bad id never creates anything. Returns the id for chaining.
 */
export function validateVolumeId(id: unknown, kind: VolumeIdKind): string {
  if (typeof id !== 'string' || !VOLUME_ID_PATTERN.test(id) || id.includes('..')) {
    throw new RuntimeError(
      'INVALID_NAME',
      `invalid ${kind} id ${JSON.stringify(id)}: use 1-128 characters of a-z, 0-9, '_', '.', '-', starting with a letter or digit, without '..'`,
      { kind, id },
    );
  }
  return id;
}
