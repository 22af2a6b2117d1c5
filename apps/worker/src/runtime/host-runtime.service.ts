import { Inject, Injectable, type OnApplicationShutdown, type OnModuleInit } from '@nestjs/common';
import { PinoLogger } from 'nestjs-pino';
import { BERTH_CONFIG, type BerthConfig } from '@berth/config';
import {
  claimDataRoot,
  lockDataRoot,
  openHostRuntime,
  releaseDataRoot,
  type DataRootLock,
  type HostRuntime,
} from '@berth/runtime';

/**
 * This host's runtime (libs/runtime), opened once: cgroup and storage drivers detected, the storage pool
 * prepared, and what a crash left half done reconciled before any job runs.
 */
@Injectable()
export class HostRuntimeService implements OnModuleInit, OnApplicationShutdown {
  private runtime?: Promise<HostRuntime>;
  private lock?: DataRootLock;
  private heldUntilExit = false;

  constructor(
    @Inject(BERTH_CONFIG) private readonly config: BerthConfig,
    private readonly log: PinoLogger,
  ) {
    log.setContext(HostRuntimeService.name);
  }

  /**
   * This process alone works on the data root, taken before anything else starts (the host's registration,
   * the reconcile of the data root, the queue): a second worker there would remove the containers this one
   * is half-way through creating, and run its jobs again. A second worker is refused at its start and
   * exits saying which process holds the data root.
   */
  async onModuleInit(): Promise<void> {
    this.lock = await lockDataRoot(this.config.runtime.dataRoot);
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
    // Who holds it, for the messages of those refused (`wipe`, a second worker).
    await claimDataRoot(r.dataRoot);
    this.log.info(
      { storage: rt.storage.info().name, cgroup: rt.cgroups.version, report, staging },
      'runtime ready',
    );
    return rt;
  }

  /**
   * Handlers still run past the shutdown grace (JobRunner): the data root stays held (and recorded) until
   * the process ends, which frees it whatever happens in the rest of the shutdown. Released earlier, a
   * worker started meanwhile would reconcile the data root under those handlers.
   */
  holdUntilExit(): void {
    this.heldUntilExit = true;
  }

  async onApplicationShutdown(): Promise<void> {
    if (this.heldUntilExit) return;
    if (this.runtime) await releaseDataRoot(this.config.runtime.dataRoot).catch(() => undefined);
    await this.lock?.release();
  }
}
