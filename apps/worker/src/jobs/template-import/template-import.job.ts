import type { JobHandler } from '../job-context';

/** Builds (busybox) or imports (tarball) a template on this host; the replica becomes `ready`. */
export const templateImportJob: JobHandler<'template.import'> = {
  kind: 'template.import',
  async run({ payload, runtime, step, hostId }) {
    const made = await step('import', async () => {
      if (payload.source.type === 'builtin') return runtime.templates.ensureBusybox(payload.name);
      if (await runtime.templates.has(payload.name)) return { name: payload.name, changed: false };
      try {
        return await runtime.templates.importTarball(payload.name, payload.source.path);
      } catch (e) {
        // Another import of the same template (a second request) sealed it meanwhile: it is there.
        if (
          (e as { code?: string }).code === 'TEMPLATE_EXISTS' &&
          (await runtime.templates.has(payload.name))
        )
          return { name: payload.name, changed: false };
        throw e;
      }
    });
    const driver = runtime.storage.info().name;
    // Its size: measured when it was made here, else read from what is there (a template this host had).
    const sizeBytes = made?.sizeBytes ?? (await runtime.templates.sizeOf(payload.name));
    return {
      result: { template: payload.name, storageDriver: driver },
      apply: async (m) => {
        await m.query(
          `UPDATE template_replicas SET state = 'ready', storage_driver = $3, updated_at = now()
           WHERE template_id = $1 AND host_id = $2`,
          [payload.templateId, hostId, driver],
        );
        if (sizeBytes > 0)
          await m.query(`UPDATE templates SET size_bytes = $2 WHERE id = $1`, [
            payload.templateId,
            sizeBytes,
          ]);
      },
    };
  },
  async onFailed({ payload, hostId }, m) {
    await m.query(
      // Not over a replica another import of the template made ready meanwhile.
      `UPDATE template_replicas SET state = 'failed', updated_at = now()
       WHERE template_id = $1 AND host_id = $2 AND state <> 'ready'`,
      [payload.templateId, hostId],
    );
  },
};
