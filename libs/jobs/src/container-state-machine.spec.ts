import { checkTransition, projectTargetState } from './container-state-machine';

describe('container state machine', () => {
  it('allows the DESIGN graph and refuses the rest with a reason', () => {
    expect(checkTransition('container.start', 'stopped')).toEqual({ allowed: true, next: 'running' });
    expect(checkTransition('container.pause', 'running')).toEqual({ allowed: true, next: 'paused' });
    expect(checkTransition('container.resize', 'paused')).toEqual({ allowed: true, next: 'paused' });
    expect(checkTransition('container.destroy', 'error')).toEqual({ allowed: true, next: 'destroyed' });
    const refused = checkTransition('container.resume', 'running');
    expect(refused.allowed).toBe(false);
    expect(refused.reason).toMatch(/cannot resume a container that is \(or will be\) running/);
    expect(checkTransition('container.start', 'destroyed').allowed).toBe(false);
    expect(checkTransition('template.import', 'running').allowed).toBe(false);
  });

  it('projects a state through pending jobs in order', () => {
    expect(projectTargetState('stopped', [])).toBe('stopped');
    expect(
      projectTargetState('creating', [
        { kind: 'container.create', start: false },
        { kind: 'container.start' },
        { kind: 'container.pause' },
      ]),
    ).toBe('paused');
    expect(projectTargetState('error', [{ kind: 'container.create' }])).toBe('running');
    expect(projectTargetState('running', [{ kind: 'container.stop' }, { kind: 'container.destroy' }])).toBe(
      'destroyed',
    );
  });

  it('skips pending jobs that would be refused from the projected state (they fail and change nothing)', () => {
    expect(projectTargetState('running', [{ kind: 'container.resume' }, { kind: 'container.stop' }])).toBe(
      'stopped',
    );
    expect(projectTargetState('stopped', [{ kind: 'container.pause' }])).toBe('stopped');
  });

  it('but a restart left behind a cancelled start still starts the container (its stop finds it stopped)', () => {
    // start + restart accepted on a stopped container, then the start cancelled: the restart runs from
    // `stopped` and leaves the container running (the state the API must check the next requests against).
    expect(projectTargetState('stopped', [{ kind: 'container.restart' }])).toBe('running');
    expect(projectTargetState('paused', [{ kind: 'container.restart' }])).toBe('running');
    expect(projectTargetState('stopped', [{ kind: 'container.restart' }, { kind: 'container.pause' }])).toBe(
      'paused',
    );
  });
});
