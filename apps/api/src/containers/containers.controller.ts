import {
  Body,
  Controller,
  Delete,
  Get,
  HttpCode,
  HttpStatus,
  Param,
  Patch,
  Post,
  Query,
  Res,
} from '@nestjs/common';
import { ApiBearerAuth, ApiBody, ApiOkResponse, ApiOperation, ApiTags } from '@nestjs/swagger';
import type { Response } from 'express';
import { CurrentPrincipal, isAdmin, type Principal } from '../auth/principal';
import { fleetPrivate } from '../common/fleet-private';
import { ApiError } from '../common/api-error';
import { jobLocation } from '../jobs/job-view';
import { ApiAcceptedJob, ApiProblems, NoBodyPipe, UuidPipe } from '../common/problem.dto';
import {
  CreateContainerDto,
  ListContainersQuery,
  ResizeContainerDto,
  SnapshotDto,
  StopContainerDto,
} from './containers.dto';
import { ContainerAcceptedDto, ContainerDto, ContainerPageDto } from './containers.responses';
import { ContainersService, type Accepted } from './containers.service';

function accepted(res: Response, a: Accepted): Accepted {
  res.setHeader('Location', jobLocation(a.job.id));
  return a;
}

const ACCEPTED = 'the job and the container as it will be; Location: /v1/jobs/<id>';
/** What any operation on one container may answer besides its own problems. */
const ON_A_CONTAINER = [
  'INVALID_ID',
  'CONTAINER_NOT_FOUND',
  'INVALID_TRANSITION',
  'CONCURRENT_CHANGE',
] as const;

@ApiTags('containers')
@ApiBearerAuth()
@Controller('v1/containers')
export class ContainersController {
  constructor(private readonly containers: ContainersService) {}

  @Post()
  @HttpCode(202)
  @ApiOperation({ summary: 'Create a container (and start it unless start=false)' })
  @ApiAcceptedJob(
    ContainerAcceptedDto,
    ACCEPTED,
    'FORBIDDEN',
    'CONTAINER_NAME_TAKEN',
    'TEMPLATE_NOT_READY',
    'TEMPLATE_NOT_FOUND',
    'HOST_NOT_FOUND:422',
    'EXCEEDS_HOST_CAPACITY',
    'NO_CAPACITY',
  )
  async create(
    @Body() dto: CreateContainerDto,
    @CurrentPrincipal() p: Principal,
    @Res({ passthrough: true }) res: Response,
  ) {
    // Real root inside (no user namespace) is the operator's to grant; so is the choice of a host.
    if (dto.privileged && !isAdmin(p))
      throw new ApiError(HttpStatus.FORBIDDEN, 'FORBIDDEN', 'a privileged container needs an admin API key');
    if (dto.host !== undefined && !isAdmin(p))
      throw new ApiError(HttpStatus.FORBIDDEN, 'FORBIDDEN', 'choosing a host needs an admin API key');
    return accepted(res, await fleetPrivate(p, this.containers.create(dto, p)));
  }

  @Get()
  @ApiOperation({ summary: 'List live containers (or those in `state`), newest first, cursor-paginated' })
  @ApiOkResponse({ type: ContainerPageDto })
  @ApiProblems('VALIDATION_FAILED', 'INVALID_CURSOR')
  list(@Query() q: ListContainersQuery, @CurrentPrincipal() p: Principal) {
    return this.containers.list(q, p);
  }

  @Get(':id')
  @ApiOkResponse({ type: ContainerDto })
  @ApiProblems('INVALID_ID', 'CONTAINER_NOT_FOUND')
  get(@Param('id', UuidPipe) id: string, @CurrentPrincipal() p: Principal) {
    return this.containers.get(id, p);
  }

  // One route per action (not `:id/:action`), so each is documented and none shadows `:id/snapshots`.
  @Post(':id/start')
  @HttpCode(202)
  @ApiOperation({ summary: 'Start a stopped container' })
  @ApiAcceptedJob(ContainerAcceptedDto, ACCEPTED, ...ON_A_CONTAINER)
  async start(
    @Param('id', UuidPipe) id: string,
    @Body(NoBodyPipe) _body: unknown,
    @CurrentPrincipal() p: Principal,
    @Res({ passthrough: true }) res: Response,
  ) {
    return accepted(res, await this.containers.operate(id, 'container.start', p));
  }

  @Post(':id/stop')
  @HttpCode(202)
  @ApiOperation({ summary: 'Stop: SIGTERM to init, SIGKILL after timeoutMs' })
  // The body is optional (absent: the default grace).
  @ApiBody({ type: StopContainerDto, required: false })
  @ApiAcceptedJob(ContainerAcceptedDto, ACCEPTED, ...ON_A_CONTAINER)
  async stop(
    @Param('id', UuidPipe) id: string,
    @Body() body: StopContainerDto,
    @CurrentPrincipal() p: Principal,
    @Res({ passthrough: true }) res: Response,
  ) {
    const extra = body.timeoutMs !== undefined ? { timeoutMs: body.timeoutMs } : {};
    return accepted(res, await this.containers.operate(id, 'container.stop', p, extra));
  }

  @Post(':id/restart')
  @HttpCode(202)
  @ApiOperation({ summary: 'Restart a running container' })
  @ApiAcceptedJob(ContainerAcceptedDto, ACCEPTED, ...ON_A_CONTAINER)
  async restart(
    @Param('id', UuidPipe) id: string,
    @Body(NoBodyPipe) _body: unknown,
    @CurrentPrincipal() p: Principal,
    @Res({ passthrough: true }) res: Response,
  ) {
    return accepted(res, await this.containers.operate(id, 'container.restart', p));
  }

  @Post(':id/pause')
  @HttpCode(202)
  @ApiOperation({ summary: 'Freeze every process of a running container' })
  @ApiAcceptedJob(ContainerAcceptedDto, ACCEPTED, ...ON_A_CONTAINER)
  async pause(
    @Param('id', UuidPipe) id: string,
    @Body(NoBodyPipe) _body: unknown,
    @CurrentPrincipal() p: Principal,
    @Res({ passthrough: true }) res: Response,
  ) {
    return accepted(res, await this.containers.operate(id, 'container.pause', p));
  }

  @Post(':id/resume')
  @HttpCode(202)
  @ApiOperation({ summary: 'Thaw a paused container' })
  @ApiAcceptedJob(ContainerAcceptedDto, ACCEPTED, ...ON_A_CONTAINER)
  async resume(
    @Param('id', UuidPipe) id: string,
    @Body(NoBodyPipe) _body: unknown,
    @CurrentPrincipal() p: Principal,
    @Res({ passthrough: true }) res: Response,
  ) {
    return accepted(res, await this.containers.operate(id, 'container.resume', p));
  }

  @Patch(':id')
  @HttpCode(202)
  @ApiOperation({ summary: 'Resize live: CPU, memory and pids limits take effect without a restart' })
  @ApiAcceptedJob(ContainerAcceptedDto, ACCEPTED, ...ON_A_CONTAINER, 'EXCEEDS_HOST_CAPACITY', 'NO_CAPACITY')
  async resize(
    @Param('id', UuidPipe) id: string,
    @Body() dto: ResizeContainerDto,
    @CurrentPrincipal() p: Principal,
    @Res({ passthrough: true }) res: Response,
  ) {
    const resources = Object.fromEntries(Object.entries(dto).filter(([, v]) => v !== undefined));
    if (Object.keys(resources).length === 0) {
      throw new ApiError(400, 'VALIDATION_FAILED', 'give at least one of cpus, memoryBytes, pidsMax');
    }
    return accepted(
      res,
      await fleetPrivate(p, this.containers.operate(id, 'container.resize', p, { resources })),
    );
  }

  @Post(':id/snapshots')
  @HttpCode(202)
  @ApiOperation({
    summary: 'Snapshot the root filesystem under a name',
    description: 'A name is taken once per container: 409 SNAPSHOT_EXISTS for a name already used.',
  })
  @ApiAcceptedJob(ContainerAcceptedDto, ACCEPTED, ...ON_A_CONTAINER, 'SNAPSHOT_EXISTS')
  async snapshot(
    @Param('id', UuidPipe) id: string,
    @Body() dto: SnapshotDto,
    @CurrentPrincipal() p: Principal,
    @Res({ passthrough: true }) res: Response,
  ) {
    return accepted(res, await this.containers.snapshot(id, p, dto.name));
  }

  @Delete(':id')
  @HttpCode(202)
  @ApiOperation({ summary: 'Destroy: nothing of it is left on the host' })
  @ApiAcceptedJob(ContainerAcceptedDto, ACCEPTED, ...ON_A_CONTAINER)
  async destroy(
    @Param('id', UuidPipe) id: string,
    @Body(NoBodyPipe) _body: unknown,
    @CurrentPrincipal() p: Principal,
    @Res({ passthrough: true }) res: Response,
  ) {
    return accepted(res, await this.containers.operate(id, 'container.destroy', p));
  }
}
