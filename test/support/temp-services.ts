import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, chownSync, writeFileSync, readdirSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** A free TCP port on loopback. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const addr = s.address();
      s.close(() => (typeof addr === 'object' && addr ? resolve(addr.port) : reject(new Error('no port'))));
    });
  });
}

async function waitFor(check: () => boolean, what: string, timeoutMs = 20_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (check()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}`);
}

/** A throwaway Redis on loopback that a test may stop and start again (same port, same data). */
export class TempRedis {
  readonly dir = mkdtempSync(join(tmpdir(), 'berth-redis-'));
  constructor(readonly port: number) {}
  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }
  private ping(): boolean {
    try {
      return execFileSync('redis-cli', ['-p', String(this.port), 'ping'], {
        encoding: 'utf8',
        stdio: ['ignore', 'pipe', 'ignore'],
      }).includes('PONG');
    } catch {
      return false;
    }
  }
  async start(): Promise<void> {
    spawn(
      'redis-server',
      [
        '--port',
        String(this.port),
        '--bind',
        '127.0.0.1',
        '--dir',
        this.dir,
        '--save',
        '',
        '--daemonize',
        'yes',
        '--pidfile',
        join(this.dir, 'redis.pid'),
        '--maxmemory-policy',
        'noeviction',
      ],
      { stdio: 'ignore' },
    );
    await waitFor(() => this.ping(), `redis on ${this.port}`);
  }
  async stop(): Promise<void> {
    try {
      execFileSync('redis-cli', ['-p', String(this.port), 'shutdown', 'nosave'], { stdio: 'ignore' });
    } catch {
      /* already gone */
    }
    await waitFor(() => !this.ping(), `redis on ${this.port} to stop`);
  }
  async destroy(): Promise<void> {
    await this.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

function pgBin(): string {
  const versions = readdirSync('/usr/lib/postgresql').sort((a, b) => Number(b) - Number(a));
  return `/usr/lib/postgresql/${versions[0]}/bin`;
}

/** A throwaway PostgreSQL cluster (run as the postgres user), with a `berth` role and database. */
export class TempPostgres {
  readonly dir = mkdtempSync(join(tmpdir(), 'berth-pg-'));
  constructor(readonly port: number) {}
  get url(): string {
    return `postgres://berth:berth@127.0.0.1:${this.port}/berth`;
  }
  private pg(args: string[]): string {
    return execFileSync('runuser', ['-u', 'postgres', '--', ...args], { encoding: 'utf8', stdio: 'pipe' });
  }
  async init(): Promise<void> {
    const data = join(this.dir, 'data');
    chownSync(this.dir, Number(execFileSync('id', ['-u', 'postgres']).toString()), 0);
    this.pg([`${pgBin()}/initdb`, '-D', data, '-U', 'postgres', '-A', 'trust', '--no-sync']);
    writeFileSync(
      join(data, 'postgresql.auto.conf'),
      `listen_addresses='127.0.0.1'\nport=${this.port}\nunix_socket_directories='${this.dir}'\nfsync=off\n`,
    );
    await this.start();
    const psql = [`${pgBin()}/psql`, '-h', this.dir, '-p', String(this.port), '-U', 'postgres', '-qc'];
    this.pg([...psql, "create role berth login password 'berth' createdb"]);
    this.pg([...psql, 'create database berth owner berth']);
  }
  async start(): Promise<void> {
    this.pg([`${pgBin()}/pg_ctl`, '-D', join(this.dir, 'data'), '-l', join(this.dir, 'log'), '-w', 'start']);
  }
  async stop(): Promise<void> {
    this.pg([`${pgBin()}/pg_ctl`, '-D', join(this.dir, 'data'), '-m', 'immediate', '-w', 'stop']);
  }
  async destroy(): Promise<void> {
    try {
      await this.stop();
    } catch {
      /* not running */
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}
