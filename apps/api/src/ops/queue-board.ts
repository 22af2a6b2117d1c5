import { HttpStatus, Injectable } from '@nestjs/common';
import { createBullBoard } from '@bull-board/api';
import { BullMQAdapter } from '@bull-board/api/bullMQAdapter';
import { ExpressAdapter } from '@bull-board/express';
import type { NextFunction, Request, RequestHandler, Response } from 'express';
import { hostQueueName } from '@berth/jobs';
import { ApiKeyService } from '../auth/api-key.service';
import { isAdmin } from '../auth/principal';
import { ApiError } from '../common/api-error';
import { HostsService } from '../hosts/hosts.controller';
import { OutboxRelay } from '../outbox/outbox.relay';

/** Where the board is served. */
export const QUEUE_BOARD_PATH = '/admin/queues';

/**
 * bull-board at QUEUE_BOARD_PATH: every host's BullMQ queue, for admins (the admin API key as a bearer
 * token, or as the password of HTTP basic auth so that a browser can open it). Read-only: it shows the
 * transport, while every change goes through the API (Postgres is the record; a job retried or removed
 * behind its back would not be). New hosts appear at the next request.
 */
@Injectable()
export class QueueBoard {
  private readonly server = new ExpressAdapter().setBasePath(QUEUE_BOARD_PATH);
  private readonly board = createBullBoard({
    queues: [],
    serverAdapter: this.server,
    options: { uiConfig: { boardTitle: 'Berth queues' } },
  });
  private readonly shown = new Set<string>();

  constructor(
    private readonly keys: ApiKeyService,
    private readonly hosts: HostsService,
    private readonly relay: OutboxRelay,
  ) {}

  /** The middlewares to mount at QUEUE_BOARD_PATH: admin check, host queues brought up to date, board. */
  handlers(): RequestHandler[] {
    const guard = (req: Request, res: Response, next: NextFunction) => {
      this.admit(req, res).then(
        () => next(),
        (e: unknown) => next(e),
      );
    };
    return [guard, this.server.getRouter() as RequestHandler];
  }

  private async admit(req: Request, res: Response): Promise<void> {
    const token = bearerOrBasicPassword(req.headers.authorization);
    const principal = token
      ? await this.keys.principalFor(req, token, String((req as { id?: unknown }).id ?? ''))
      : null;
    if (!principal) {
      res.setHeader('WWW-Authenticate', 'Basic realm="Berth queues", charset="UTF-8"');
      throw new ApiError(
        HttpStatus.UNAUTHORIZED,
        'UNAUTHORIZED',
        'an admin API key is required (Authorization: Bearer …, or basic auth with the key as password)',
      );
    }
    if (!isAdmin(principal))
      throw new ApiError(HttpStatus.FORBIDDEN, 'FORBIDDEN', 'the queue board needs an admin API key');
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      throw new ApiError(
        HttpStatus.METHOD_NOT_ALLOWED,
        'READ_ONLY',
        'the queue board is read-only: change jobs through the API (/v1/jobs/…)',
      );
    }
    await this.sync();
  }

  /** Adds the queue of every host the board does not show yet. */
  private async sync(): Promise<void> {
    for (const h of await this.hosts.list()) {
      const name = hostQueueName(h.id);
      if (this.shown.has(name)) continue;
      this.board.addQueue(
        new BullMQAdapter(this.relay.queue(name), {
          readOnlyMode: true,
          displayName: `${name} (${h.name})`,
        }),
      );
      this.shown.add(name);
    }
  }
}

/** The API key in `Authorization: Bearer <key>` or `Basic base64(<any user>:<key>)`. */
export function bearerOrBasicPassword(header: string | undefined): string | null {
  if (!header) return null;
  const bearer = /^Bearer\s+(\S+)$/i.exec(header);
  if (bearer) return bearer[1];
  const basic = /^Basic\s+([A-Za-z0-9+/=]+)$/i.exec(header);
  if (!basic) return null;
  const decoded = Buffer.from(basic[1], 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  return colon >= 0 && colon < decoded.length - 1 ? decoded.slice(colon + 1) : null;
}
