import { mkdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { RuntimeError } from '../common/errors';
import { validateVolumeId } from './volume-id';
import { VolumeMeta, listIds, removeTree } from './volume-files';

/**
 * Templates kept as plain directories (dir and overlay drivers): sealing is a marker in `meta/`, since a plain
 * directory cannot be made read-only for root. Composition, not a base class: each driver keeps its own shape.
 */
export class DirectoryTemplates {
  constructor(
    private readonly templatesDir: string,
    private readonly meta: VolumeMeta,
    /** Containers that still need the template (overlay lowerdir); empty when clones are independent. */
    private readonly dependents: (templateId: string) => Promise<string[]>,
  ) {}

  path(templateId: string): string {
    return join(this.templatesDir, validateVolumeId(templateId, 'template'));
  }

  async create(templateId: string): Promise<string> {
    const path = this.path(templateId);
    if (await this.meta.isSealed(templateId)) {
      throw new RuntimeError('TEMPLATE_EXISTS', `template ${templateId} already exists and is sealed`, {
        templateId,
      });
    }
    await mkdir(path, { recursive: true });
    return path;
  }

  async seal(templateId: string): Promise<void> {
    const path = this.path(templateId);
    if (!(await isDirectory(path))) {
      throw new RuntimeError('TEMPLATE_NOT_FOUND', `template ${templateId} does not exist`, {
        templateId,
        path,
      });
    }
    await this.meta.setSealed(templateId);
  }

  async has(templateId: string): Promise<boolean> {
    const path = this.path(templateId);
    return (await this.meta.isSealed(templateId)) && (await isDirectory(path));
  }

  /** Throws TEMPLATE_NOT_FOUND unless the template exists and is sealed; returns its path. */
  async requireSealed(templateId: string): Promise<string> {
    if (!(await this.has(templateId))) {
      throw new RuntimeError(
        'TEMPLATE_NOT_FOUND',
        `template ${templateId} does not exist or is not sealed yet`,
        {
          templateId,
        },
      );
    }
    return this.path(templateId);
  }

  async delete(templateId: string): Promise<void> {
    const path = this.path(templateId);
    const users = await this.dependents(templateId);
    if (users.length > 0) {
      throw new RuntimeError(
        'TEMPLATE_IN_USE',
        `template ${templateId} is used by ${users.length} container(s) (${users.slice(0, 5).join(', ')}): delete them first`,
        { templateId, containers: users },
      );
    }
    // Unseal first so no clone can start from a half-deleted template.
    await this.meta.clearSealed(templateId);
    await removeTree(path);
  }

  async list(): Promise<string[]> {
    const ids = await listIds(this.templatesDir);
    const sealed = await Promise.all(ids.map(async (id) => ((await this.has(id)) ? id : undefined)));
    return sealed.filter((id): id is string => id !== undefined);
  }
}

export async function isDirectory(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isDirectory();
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw error;
  }
}
