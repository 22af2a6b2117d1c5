import { Module } from '@nestjs/common';
import { JobEnqueuer } from './job-enqueuer';
import { JobNotifications } from './job-notifications';
import { JobsController } from './jobs.controller';
import { JobsService } from './jobs.service';

@Module({
  controllers: [JobsController],
  providers: [JobsService, JobEnqueuer, JobNotifications],
  exports: [JobsService, JobEnqueuer],
})
export class JobsModule {}
