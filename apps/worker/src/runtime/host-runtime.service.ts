import { Inject, Injectable, type OnApplicationShutdown } from '@nestjs/common';
import { PinoLogger } from 'nestjs-pino';
import { BERTH_CONFIG, type BerthConfig } from '@berth/config';
import { claimDataRoot, openHostRuntime, releaseDataRoot, type HostRuntime } from '@berth/runtime';

/**
 * This host's runtime (libs/runtime), opened once: cgroup and storage drivers detected, the storage pool
 * prepared, and what a crash left half done reconciled before any job runs.
 */
@Injectable()
export class HostRuntimeService implements OnApplicationShutdown {
  private runtime?: Promise<HostRuntime>;

  constructor(
    @Inject(BERTH_CONFIG) private readonly config: BerthConfig,
    private readonly log: PinoLogger,
  ) {
    log.setContext(HostRuntimeService.name);
  }

  get(): Promise<HostRuntime> {
    this.runtime ??= this.open();
    return this.runtime;
  }

  private async open(): Promise<HostRuntime> {
    const r = this.config.runtime;
    const rt = await openHostRuntime({
      dataRoot: r.dataRoot,
      cgroupParent: r.cgroupParent,
      storageDriver: r.storageDriver,
      // Bridge containers attach here on start; `none` containers never touch it.
      network: { bridge: r.network.bridge, cidr: r.network.cidr, hostNetns: r.network.hostNetns },
    });
    // Half-created containers (a crash mid-create) are removed; their job is retried and creates them anew.
    const report = await rt.containers.reconcile({ remove: true });
    // And what a template import killed midway left in its staging directory.
    const staging = await rt.templates.sweepStaging();
    // This process works on the data root now (`wipe` refuses while it runs).
    await claimDataRoot(r.dataRoot);
    this.log.info(
      { storage: rt.storage.info().name, cgroup: rt.cgroups.version, report, staging },
      'runtime ready',
    );
    return rt;
  }

  async onApplicationShutdown(): Promise<void> {
    if (this.runtime) await releaseDataRoot(this.config.runtime.dataRoot).catch(() => undefined);
  }
}
