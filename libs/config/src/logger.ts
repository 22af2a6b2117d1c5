import type { Params } from 'nestjs-pino';
import type { BerthConfig } from './config';

/** Structured JSON logs (pino) for both apps; `app` names the process on every line. */
export function loggerParams(config: BerthConfig, app: 'api' | 'worker'): Params {
  return {
    pinoHttp: {
      level: config.logLevel,
      base: { app, host: config.host.name },
      timestamp: () => `,"time":"${new Date().toISOString()}"`,
      autoLogging: app === 'api' ? { ignore: (req) => /^\/(healthz|readyz)/.test(req.url ?? '') } : false,
      genReqId: (req, res) => {
        const fromClient = req.headers['x-request-id'];
        const id =
          typeof fromClient === 'string' && /^[\w.-]{1,128}$/.test(fromClient)
            ? fromClient
            : crypto.randomUUID();
        res.setHeader('X-Request-Id', id);
        return id;
      },
      redact: ['req.headers.authorization', 'req.headers.cookie'],
    },
  };
}
