import { STATUS_CODES } from 'node:http';
import type { Socket } from 'node:net';
import type { ErrorCode } from './error-codes';

/** Node's HTTP parser errors a client can cause, with the status Node 20 itself answers. */
function statusOf(err: NodeJS.ErrnoException): number {
  if (err.code === 'HPE_HEADER_OVERFLOW') return 431;
  if (err.code === 'HPE_CHUNK_EXTENSIONS_OVERFLOW') return 413;
  if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT') return 408;
  return 400;
}

const CODES: Record<number, ErrorCode> = {
  400: 'BAD_REQUEST',
  408: 'REQUEST_TIMEOUT',
  413: 'PAYLOAD_TOO_LARGE',
  431: 'HEADERS_TOO_LARGE',
};

const DETAILS: Record<number, string> = {
  400: 'the request is not valid HTTP',
  408: 'the request did not arrive in time',
  413: 'the chunk extensions are larger than the server accepts',
  431: 'the request line or headers are larger than the server accepts (16 KiB)',
};

/**
 * The answer to a request Node's HTTP parser refused before any route saw it (a request line or headers
 * over the limit, a line that is not HTTP, a request that never finished): problem+json with a stable
 * `code`, like every other error of the API, instead of Node's bare status line. Installed as the server's
 * `clientError` listener (which replaces Node's own answer); the connection is closed after it.
 */
export function answerClientError(err: NodeJS.ErrnoException, socket: Socket): void {
  // Nothing to answer on a connection the client reset, or one whose response already began (as Node).
  const inFlight = (socket as Socket & { _httpMessage?: { headersSent?: boolean } })._httpMessage;
  if (err.code === 'ECONNRESET' || !socket.writable || inFlight?.headersSent) {
    socket.destroy();
    return;
  }
  const status = statusOf(err);
  const code = CODES[status];
  const body = JSON.stringify({ type: 'about:blank', title: code, status, code, detail: DETAILS[status] });
  // Written, then the connection destroyed (Node's own answer does the same): the server allows half-open
  // connections, and after `end` alone a client that keeps its side open would hold the socket (and a
  // graceful shutdown) until the headers timeout.
  socket.end(
    `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\n` +
      'Content-Type: application/problem+json; charset=utf-8\r\n' +
      `Content-Length: ${Buffer.byteLength(body)}\r\n` +
      'Connection: close\r\n\r\n' +
      body,
    () => socket.destroy(),
  );
}
