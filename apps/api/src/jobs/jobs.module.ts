import { Module } from '@nestjs/common';
import { PlacementService } from '../hosts/placement.service';
import { JobEnqueuer } from './job-enqueuer';
import { JobNotifications } from './job-notifications';
import { JobsController } from './jobs.controller';
import { JobsService } from './jobs.service';

@Module({
  controllers: [JobsController],
  // Placement here: a retried resize takes its room again (JobsService.retry), as creates and resizes do.
  providers: [JobsService, JobEnqueuer, JobNotifications, PlacementService],
  exports: [JobsService, JobEnqueuer, PlacementService],
})
export class JobsModule {}
