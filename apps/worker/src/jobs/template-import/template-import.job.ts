import type { JobHandler } from '../job-context';

/** Builds (busybox) or imports (tarball) a template on this host; the replica becomes `ready`. */
export const templateImportJob: JobHandler<'template.import'> = {
  kind: 'template.import',
  async run({ payload, runtime, step, hostId }) {
    await step('import', async () => {
      if (payload.source.type === 'builtin') return runtime.templates.ensureBusybox(payload.name);
      if (await runtime.templates.has(payload.name)) return { name: payload.name, changed: false };
      return runtime.templates.importTarball(payload.name, payload.source.path);
    });
    const driver = runtime.storage.info().name;
    return {
      result: { template: payload.name, storageDriver: driver },
      apply: async (m) => {
        await m.query(
          `UPDATE template_replicas SET state = 'ready', storage_driver = $3, updated_at = now()
           WHERE template_id = $1 AND host_id = $2`,
          [payload.templateId, hostId, driver],
        );
      },
    };
  },
  async onFailed({ payload, hostId }, m) {
    await m.query(
      `UPDATE template_replicas SET state = 'failed', updated_at = now() WHERE template_id = $1 AND host_id = $2`,
      [payload.templateId, hostId],
    );
  },
};
