import {
  Body,
  type CanActivate,
  Controller,
  type ExecutionContext,
  Get,
  Headers,
  HttpCode,
  Inject,
  Injectable,
  Param,
  Post,
  Query,
  Res,
  Sse,
  UseGuards,
  type MessageEvent,
} from '@nestjs/common';
import { ApiBearerAuth, ApiOkResponse, ApiOperation, ApiProduces, ApiTags } from '@nestjs/swagger';
import type { Response } from 'express';
import { Observable } from 'rxjs';
import { BERTH_CONFIG, type BerthConfig } from '@berth/config';
import { CurrentPrincipal, isAdmin, type AuthedRequest, type Principal } from '../auth/principal';
import { fleetPrivate } from '../common/fleet-private';
import { ApiAcceptedJob, ApiProblems, ApiWrite, NoBodyPipe, UuidPipe } from '../common/problem.dto';
import { FINAL_JOB_STATES, jobLocation } from './job-view';
import { ListJobsQuery, WaitQuery } from './jobs.dto';
import { JobDto, JobPageDto, JobWithEventsDto } from './jobs.responses';
import { JobsService } from './jobs.service';

/** What UuidPipe lets through (any version): what it refuses is its 400, not a lookup's 404. */
const ANY_UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/**
 * A job of another tenant, or of the fleet to a key without the admin scope, is answered 404, as an
 * unknown one (JobsService.assertVisible); only an admin key skips the lookup. A malformed id is left to
 * the UUID pipe (400).
 */
@Injectable()
export class JobVisibleGuard implements CanActivate {
  constructor(protected readonly jobs: JobsService) {}

  async canActivate(ctx: ExecutionContext): Promise<boolean> {
    const req = ctx.switchToHttp().getRequest<AuthedRequest>();
    const id = req.params.id;
    const p = req.principal!;
    if (typeof id === 'string' && ANY_UUID.test(id) && (this.always || p.tenantId || !isAdmin(p)))
      await this.jobs.assertVisible(id, req.principal!);
    return true;
  }

  protected readonly always: boolean = false;
}

/**
 * The same for an event stream, for every key: an unknown job's stream answers 404 before it opens. Nest
 * commits SSE headers on the next macrotask, so a lookup inside the handler (a database round trip) can
 * lose that race and end as a 200 stream with an error event; guards run, and are answered by the
 * exception filter, before that.
 */
@Injectable()
export class JobExistsGuard extends JobVisibleGuard {
  protected override readonly always = true;
}

@ApiTags('jobs')
@ApiBearerAuth()
@Controller('v1/jobs')
export class JobsController {
  constructor(
    private readonly jobs: JobsService,
    @Inject(BERTH_CONFIG) private readonly config: BerthConfig,
  ) {}

  @Get()
  @ApiOperation({ summary: 'List jobs, newest first, with filters and cursor pagination' })
  @ApiOkResponse({ type: JobPageDto })
  @ApiProblems('VALIDATION_FAILED', 'INVALID_CURSOR')
  list(@Query() q: ListJobsQuery, @CurrentPrincipal() p: Principal) {
    return this.jobs.list({
      ...q,
      tenant: p.tenantId ?? undefined,
      containersOnly: !isAdmin(p),
      limit: q.limit ?? 50,
    });
  }

  @Get(':id')
  @ApiOperation({ summary: 'A job with every event (transitions, steps, retries) from the audit trail' })
  @ApiOkResponse({ type: JobWithEventsDto })
  @ApiProblems('VALIDATION_FAILED', 'INVALID_ID', 'JOB_NOT_FOUND')
  @UseGuards(JobVisibleGuard)
  async get(@Param('id', UuidPipe) id: string, @CurrentPrincipal() p: Principal) {
    const [job, events] = await Promise.all([this.jobs.get(id, undefined, p), this.jobs.events(id)]);
    return { ...job, events };
  }

  @Get(':id/wait')
  @ApiOperation({ summary: 'Long-poll: answers as soon as the job has ended, or after `timeout` seconds' })
  @ApiOkResponse({ type: JobDto, description: 'the job: ended, or as it is when the timeout passed' })
  @ApiProblems('VALIDATION_FAILED', 'INVALID_ID', 'JOB_NOT_FOUND')
  @UseGuards(JobVisibleGuard)
  wait(
    @Param('id', UuidPipe) id: string,
    @Query() q: WaitQuery,
    @CurrentPrincipal() p: Principal,
    @Res({ passthrough: true }) res: Response,
  ) {
    // A client that hangs up stops the wait (the response's 'close' before its end: the connection went).
    const gone = new AbortController();
    res.on('close', () => {
      if (!res.writableFinished) gone.abort();
    });
    return this.jobs.wait(id, (q.timeout ?? 30) * 1_000, p, gone.signal);
  }

  @Sse(':id/events')
  @ApiOperation({
    summary: 'Server-Sent Events: every event of the job as it happens; ends when the job ends',
    description:
      'Each audit event of the job is one SSE message (`event:` the action, e.g. job.queued, `id:` the ' +
      'event id, `data:` a JobEvent as JSON); when the job has ended a last `end` message carries the job ' +
      'and the stream closes. A client that reconnects with `Last-Event-ID` gets only the events after it. ' +
      'While nothing happens a comment line (`: keep-alive`) is sent every API_SSE_KEEPALIVE_MS (15 s), so ' +
      'that proxies keep the stream of a long job open. When the API shuts down the stream ends without `end`: ' +
      'reconnect with `Last-Event-ID`.',
  })
  @ApiProduces('text/event-stream')
  @ApiOkResponse({ description: 'text/event-stream of JobEvent messages, then `end` with the Job' })
  @ApiProblems('VALIDATION_FAILED', 'INVALID_ID', 'JOB_NOT_FOUND')
  @UseGuards(JobExistsGuard)
  events(
    @Param('id', UuidPipe) id: string,
    @CurrentPrincipal() p: Principal,
    @Headers('last-event-id') lastEventId?: string,
  ): Observable<MessageEvent> {
    return new Observable<MessageEvent>((sub) => {
      // EventSource's reconnect names the last event it got: the stream goes on after it (an id that is not
      // one of ours is ignored: the whole story again).
      let last = lastEventId && /^\d{1,18}$/.test(lastEventId) ? lastEventId : '0';
      let busy = false;
      let pending = false;
      const pump = async () => {
        if (busy) {
          pending = true;
          return;
        }
        busy = true;
        try {
          // The job first, its events second: a job read as ended has its final event committed with it, so
          // the events read after it include that event (the other order could see the job end after an
          // events read that missed it, and close the stream without it).
          const job = await this.jobs.get(id, undefined, p);
          for (const e of await this.jobs.events(id, last)) {
            last = e.id;
            sub.next({ id: e.id, type: e.action, data: e });
          }
          if (FINAL_JOB_STATES.includes(job.state)) {
            // The id of the last event: an EventSource that reconnects with it gets no event twice (Nest
            // would number an event without one itself, 1, 2, …, and send the client's position back).
            sub.next({ id: last, type: 'end', data: job });
            sub.complete();
          }
        } catch (e) {
          sub.error(e);
        } finally {
          busy = false;
          if (pending) {
            pending = false;
            void pump();
          }
        }
      };
      // Woken by every change of the job (and by JobNotifications' safety net when a notification was lost).
      const unsubscribe = this.jobs.subscribe(id, () => void pump());
      // A comment, which EventSource ignores: bytes on an idle stream, so that no proxy times it out.
      const keepAlive = setInterval(
        () => sub.next({ comment: 'keep-alive' }),
        this.config.api.sseKeepAliveMs,
      );
      // The process shuts down: the stream ends (an EventSource reconnects, after the last event it got).
      const closing = this.jobs.closing;
      const stop = () => sub.complete();
      if (closing.aborted) stop();
      else closing.addEventListener('abort', stop, { once: true });
      void pump();
      return () => {
        unsubscribe();
        clearInterval(keepAlive);
        closing.removeEventListener('abort', stop);
      };
    });
  }

  @Post(':id/retry')
  @HttpCode(202)
  @ApiOperation({ summary: 'Retry a failed or cancelled job (resumes after its finished steps)' })
  @ApiAcceptedJob(
    JobDto,
    'the job, queued again; Location: /v1/jobs/<id>',
    'INVALID_ID',
    'FORBIDDEN',
    'JOB_NOT_FOUND',
    'JOB_NOT_RETRYABLE',
    'CONTAINER_DESTROYED',
    'INVALID_TRANSITION',
    'CONCURRENT_CHANGE',
    'EXCEEDS_HOST_CAPACITY',
    'NO_CAPACITY',
  )
  @UseGuards(JobVisibleGuard)
  async retry(
    @Param('id', UuidPipe) id: string,
    @Body(NoBodyPipe) _body: unknown,
    @CurrentPrincipal() p: Principal,
    @Res({ passthrough: true }) res: Response,
  ) {
    // A resize's retry needs its room again: a refusal without the fleet's details for a tenant's key.
    const view = await fleetPrivate(p, this.jobs.retry(id, p));
    // Only on the answer: a refused retry's problem has no job to point at.
    res.setHeader('Location', jobLocation(id));
    return view;
  }

  @Post(':id/cancel')
  @HttpCode(200)
  @ApiOperation({
    summary: 'Cancel a job that has not started yet (queued, or claimed and waiting for a worker slot)',
  })
  @ApiWrite(JobDto, 'the job, cancelled', 'INVALID_ID', 'FORBIDDEN', 'JOB_NOT_FOUND', 'JOB_NOT_CANCELLABLE')
  @UseGuards(JobVisibleGuard)
  cancel(
    @Param('id', UuidPipe) id: string,
    @Body(NoBodyPipe) _body: unknown,
    @CurrentPrincipal() p: Principal,
  ) {
    return this.jobs.cancel(id, p);
  }
}
