import {
  Body,
  Controller,
  Delete,
  Get,
  HttpCode,
  Param,
  ParseUUIDPipe,
  Patch,
  Post,
  Query,
  Res,
} from '@nestjs/common';
import { ApiAcceptedResponse, ApiBearerAuth, ApiOperation, ApiTags } from '@nestjs/swagger';
import type { Response } from 'express';
import { CurrentPrincipal, type Principal } from '../auth/principal';
import { ApiError } from '../common/api-error';
import {
  CreateContainerDto,
  ListContainersQuery,
  ResizeContainerDto,
  SnapshotDto,
  StopContainerDto,
} from './containers.dto';
import { ContainersService, type Accepted } from './containers.service';

function accepted(res: Response, a: Accepted): Accepted {
  res.setHeader('Location', `/v1/jobs/${a.job.id}`);
  return a;
}

@ApiTags('containers')
@ApiBearerAuth()
@Controller('v1/containers')
export class ContainersController {
  constructor(private readonly containers: ContainersService) {}

  @Post()
  @HttpCode(202)
  @ApiOperation({ summary: 'Create a container (and start it unless start=false)' })
  @ApiAcceptedResponse({ description: 'the job and the container; Location: /v1/jobs/<id>' })
  async create(
    @Body() dto: CreateContainerDto,
    @CurrentPrincipal() p: Principal,
    @Res({ passthrough: true }) res: Response,
  ) {
    return accepted(res, await this.containers.create(dto, p));
  }

  @Get()
  @ApiOperation({ summary: 'List live containers (or those in `state`), newest first, cursor-paginated' })
  list(@Query() q: ListContainersQuery, @CurrentPrincipal() p: Principal) {
    return this.containers.list(q, p);
  }

  @Get(':id')
  get(@Param('id', ParseUUIDPipe) id: string, @CurrentPrincipal() p: Principal) {
    return this.containers.get(id, p);
  }

  @Post(':id/:action')
  @HttpCode(202)
  @ApiOperation({ summary: 'start | stop | restart | pause | resume' })
  async action(
    @Param('id', ParseUUIDPipe) id: string,
    @Param('action') action: string,
    @Body() body: StopContainerDto,
    @CurrentPrincipal() p: Principal,
    @Res({ passthrough: true }) res: Response,
  ) {
    if (!['start', 'stop', 'restart', 'pause', 'resume'].includes(action)) {
      throw new ApiError(404, 'NOT_FOUND', `unknown container action ${action}`);
    }
    if (action !== 'stop' && body.timeoutMs !== undefined) {
      throw new ApiError(400, 'VALIDATION_FAILED', 'timeoutMs applies to stop only');
    }
    const extra = action === 'stop' && body.timeoutMs !== undefined ? { timeoutMs: body.timeoutMs } : {};
    return accepted(
      res,
      await this.containers.operate(id, `container.${action}` as 'container.start', p, extra),
    );
  }

  @Patch(':id')
  @HttpCode(202)
  @ApiOperation({ summary: 'Resize live: CPU, memory and pids limits take effect without a restart' })
  async resize(
    @Param('id', ParseUUIDPipe) id: string,
    @Body() dto: ResizeContainerDto,
    @CurrentPrincipal() p: Principal,
    @Res({ passthrough: true }) res: Response,
  ) {
    const resources = Object.fromEntries(Object.entries(dto).filter(([, v]) => v !== undefined));
    if (Object.keys(resources).length === 0) {
      throw new ApiError(400, 'VALIDATION_FAILED', 'give at least one of cpus, memoryBytes, pidsMax');
    }
    return accepted(res, await this.containers.operate(id, 'container.resize', p, { resources }));
  }

  @Post(':id/snapshots')
  @HttpCode(202)
  async snapshot(
    @Param('id', ParseUUIDPipe) id: string,
    @Body() dto: SnapshotDto,
    @CurrentPrincipal() p: Principal,
    @Res({ passthrough: true }) res: Response,
  ) {
    return accepted(res, await this.containers.operate(id, 'container.snapshot', p, { snapshot: dto.name }));
  }

  @Delete(':id')
  @HttpCode(202)
  @ApiOperation({ summary: 'Destroy: nothing of it is left on the host' })
  async destroy(
    @Param('id', ParseUUIDPipe) id: string,
    @CurrentPrincipal() p: Principal,
    @Res({ passthrough: true }) res: Response,
  ) {
    return accepted(res, await this.containers.operate(id, 'container.destroy', p));
  }
}
