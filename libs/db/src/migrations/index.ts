import { InitialSchema1764000000000 } from './1764000000000-initial-schema';
import { JobPipeline1764100000000 } from './1764100000000-job-pipeline';
import { JobNotifyOnce1764200000000 } from './1764200000000-job-notify-once';
import { DeferredNotify1764300000000 } from './1764300000000-deferred-notify';
import { HotJobTransitions1764400000000 } from './1764400000000-hot-job-transitions';
import { JobNotifyAction1764500000000 } from './1764500000000-job-notify-action';
import { JobNotifyRow1764600000000 } from './1764600000000-job-notify-row';
import { JobActiveSilent1764700000000 } from './1764700000000-job-active-silent';
import { AuditIndexUnused1764800000000 } from './1764800000000-audit-index-unused';
import { HostReservations1764900000000 } from './1764900000000-host-reservations';
import { JobCarrier1765000000000 } from './1765000000000-job-carrier';
import { HostInstance1765100000000 } from './1765100000000-host-instance';
import { ResizeHolds1765200000000 } from './1765200000000-resize-holds';
import { AuditCommitOrder1765300000000 } from './1765300000000-audit-commit-order';

/** Every migration, in order. Listed explicitly (no globs) so compiled and ts-node runs see the same set. */
export const migrations = [
  InitialSchema1764000000000,
  JobPipeline1764100000000,
  JobNotifyOnce1764200000000,
  DeferredNotify1764300000000,
  HotJobTransitions1764400000000,
  JobNotifyAction1764500000000,
  JobNotifyRow1764600000000,
  JobActiveSilent1764700000000,
  AuditIndexUnused1764800000000,
  HostReservations1764900000000,
  JobCarrier1765000000000,
  HostInstance1765100000000,
  ResizeHolds1765200000000,
  AuditCommitOrder1765300000000,
];
