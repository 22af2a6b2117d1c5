import type { JobKind } from './job-kinds';

export type ContainerState =
  'creating' | 'stopped' | 'running' | 'paused' | 'suspended' | 'destroying' | 'destroyed' | 'error';

/**
 * Which container jobs may be accepted in which state, and the state the container is in once the job
 * has run (DESIGN.md §5: creating → stopped ⇄ running ⇄ paused; any → destroying → destroyed; failures →
 * error). The API checks requests against the container's *target* state (after every job it already
 * accepted), so create + start + stop + destroy fired back to back are all accepted and run in order.
 */
const TRANSITIONS: Partial<
  Record<JobKind, { from: readonly ContainerState[]; to: ContainerState | 'same' }>
> = {
  'container.start': { from: ['stopped', 'error'], to: 'running' },
  'container.stop': { from: ['running', 'paused', 'error'], to: 'stopped' },
  'container.restart': { from: ['running'], to: 'running' },
  'container.pause': { from: ['running'], to: 'paused' },
  'container.resume': { from: ['paused'], to: 'running' },
  'container.resize': { from: ['stopped', 'running', 'paused'], to: 'same' },
  'container.snapshot': { from: ['stopped', 'running', 'paused'], to: 'same' },
  'container.destroy': {
    from: ['creating', 'stopped', 'running', 'paused', 'suspended', 'error'],
    to: 'destroyed',
  },
};

/**
 * What a job accepted earlier does when, after a cancelled or failed job before it, it runs from a state
 * the state machine would not have accepted it in, where that is not "nothing": a restart is a stop (of a
 * stopped container: nothing; of a paused one: it stops) and a start, so it leaves the container running.
 * The others find nothing to do (a start of a running container, a stop of a stopped one, a resume of a
 * running one) or fail (a pause of a stopped one), and the container stays as it was.
 */
const RUN_TIME_EFFECTS: Partial<Record<JobKind, Partial<Record<ContainerState, ContainerState>>>> = {
  'container.restart': { stopped: 'running', paused: 'running' },
};

export interface TransitionCheck {
  allowed: boolean;
  next: ContainerState;
  reason?: string;
}

/** Whether a job of `kind` may be accepted for a container whose target state is `from`. */
export function checkTransition(kind: JobKind, from: ContainerState): TransitionCheck {
  const t = TRANSITIONS[kind];
  if (!t) return { allowed: false, next: from, reason: `${kind} is not a container operation` };
  if (!t.from.includes(from)) {
    return {
      allowed: false,
      next: from,
      reason: `cannot ${kind.split('.')[1]} a container that is (or will be) ${from}; allowed from: ${t.from.join(', ')}`,
    };
  }
  return { allowed: true, next: t.to === 'same' ? from : t.to };
}

/** The state the runtime reports maps onto the API's states (suspension etc. are API-level only). */
export function stateFromRuntime(status: 'creating' | 'stopped' | 'running' | 'paused'): ContainerState {
  return status;
}

/** A job of a container that has not ended yet, in acceptance order. */
export interface PendingContainerJob {
  kind: JobKind;
  /** For container.create: whether it starts the container. */
  start?: boolean;
}

/**
 * The state a container will be in once its pending jobs have run, starting from its present state:
 * recomputed whenever a job leaves the queue other than by completing as planned (failure, cancellation,
 * retry), so that later requests are checked against what will really happen.
 */
export function projectTargetState(
  state: ContainerState,
  pending: readonly PendingContainerJob[],
): ContainerState {
  let s = state;
  for (const job of pending) {
    if (job.kind === 'container.create') {
      s = job.start === false ? 'stopped' : 'running';
      continue;
    }
    const t = checkTransition(job.kind, s);
    // A job the state machine would refuse from here changes nothing at run time (its operation finds
    // nothing to do, or fails), except where the runtime's operation does act (RUN_TIME_EFFECTS).
    s = t.allowed ? t.next : (RUN_TIME_EFFECTS[job.kind]?.[s] ?? s);
  }
  return s;
}
