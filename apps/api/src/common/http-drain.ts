import { Injectable, type BeforeApplicationShutdown } from '@nestjs/common';
import type { NextFunction, Request, Response } from 'express';

/**
 * Lets the HTTP server close as soon as the requests in flight are answered. Node's `server.close()` waits
 * for every connection: one that was busy when it was called stays open after its answer, kept alive for
 * the client's next request, until the keep-alive timeout (5 s), and a shutdown (SIGTERM, `npm run up --
 * stop`) waits that long. When the shutdown begins, the answers not yet started say `Connection: close`
 * (Node closes the connection after them), and the streams already under way (Server-Sent Events, ended
 * by JobNotifications.closing) close their connection once their end is written.
 */
@Injectable()
export class HttpDrain implements BeforeApplicationShutdown {
  private readonly inFlight = new Set<Response>();
  private closing = false;

  /** Express middleware: keeps track of the answers in flight. */
  readonly middleware = (req: Request, res: Response, next: NextFunction): void => {
    if (this.closing) res.setHeader('Connection', 'close');
    this.inFlight.add(res);
    res.once('finish', () => {
      this.inFlight.delete(res);
      // A stream whose headers went out before the shutdown began (no `Connection: close` in them); the
      // request's socket: the answer's is already detached from it at its end.
      if (this.closing) req.socket.end();
    });
    res.once('close', () => this.inFlight.delete(res));
    next();
  };

  beforeApplicationShutdown(): void {
    this.closing = true;
    for (const res of this.inFlight) if (!res.headersSent) res.setHeader('Connection', 'close');
  }
}
