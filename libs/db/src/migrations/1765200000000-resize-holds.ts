import type { MigrationInterface, QueryRunner } from 'typeorm';
import { HOST_RESERVATIONS_FUNCTION, HOST_RESERVATIONS_TRIGGER } from './1764900000000-host-reservations';

/**
 * A resize holds its growth on the container's host from the moment it is accepted, not from the moment
 * it has run. Until now the host's counters (migration HostReservations) followed the container's row,
 * which the resize's completion changes: between the acceptance of a growth and its run, a create or
 * another resize on the same host saw the old limits and could take the same room twice.
 *
 * `containers.held_cpus` / `held_memory_bytes`: the largest limits asked by the container's unfinished
 * resize jobs (queued, active, waiting to retry; 0 when there is none), kept by a trigger on `jobs` in
 * the transaction that inserts such a job or changes its state (accepted, retried, completed, failed,
 * cancelled). The host's counters count each live container at `GREATEST(limit, held)`: the room of a
 * pending growth is taken at once, and a shrink frees its room once it has run.
 */
export class ResizeHolds1765200000000 implements MigrationInterface {
  name = 'ResizeHolds1765200000000';

  async up(q: QueryRunner): Promise<void> {
    await q.query(`
      ALTER TABLE containers
        ADD COLUMN held_cpus numeric(12, 2) NOT NULL DEFAULT 0,
        ADD COLUMN held_memory_bytes bigint NOT NULL DEFAULT 0`);
    await q.query(`
      CREATE OR REPLACE FUNCTION berth_host_reservations() RETURNS trigger LANGUAGE plpgsql AS $fn$
      BEGIN
        IF TG_OP <> 'INSERT' AND OLD.host_id IS NOT NULL AND OLD.destroyed_at IS NULL THEN
          IF TG_OP = 'UPDATE' AND NEW.host_id = OLD.host_id AND NEW.destroyed_at IS NULL THEN
            -- Still live on the same host: only a resize (its row, or what its pending resizes hold) changes
            -- what it reserves.
            IF (GREATEST(NEW.cpus, NEW.held_cpus), GREATEST(NEW.memory_bytes, NEW.held_memory_bytes), NEW.disk_bytes)
               IS DISTINCT FROM
               (GREATEST(OLD.cpus, OLD.held_cpus), GREATEST(OLD.memory_bytes, OLD.held_memory_bytes), OLD.disk_bytes) THEN
              UPDATE hosts SET
                reserved_cpus = reserved_cpus + GREATEST(NEW.cpus, NEW.held_cpus) - GREATEST(OLD.cpus, OLD.held_cpus),
                reserved_memory_bytes = reserved_memory_bytes + GREATEST(NEW.memory_bytes, NEW.held_memory_bytes)
                                        - GREATEST(OLD.memory_bytes, OLD.held_memory_bytes),
                reserved_disk_bytes = reserved_disk_bytes + NEW.disk_bytes - OLD.disk_bytes
              WHERE id = NEW.host_id;
            END IF;
            RETURN NULL;
          END IF;
          UPDATE hosts SET reserved_containers = reserved_containers - 1,
                           reserved_cpus = reserved_cpus - GREATEST(OLD.cpus, OLD.held_cpus),
                           reserved_memory_bytes = reserved_memory_bytes - GREATEST(OLD.memory_bytes, OLD.held_memory_bytes),
                           reserved_disk_bytes = reserved_disk_bytes - OLD.disk_bytes
          WHERE id = OLD.host_id;
        END IF;
        IF TG_OP <> 'DELETE' AND NEW.host_id IS NOT NULL AND NEW.destroyed_at IS NULL THEN
          UPDATE hosts SET reserved_containers = reserved_containers + 1,
                           reserved_cpus = reserved_cpus + GREATEST(NEW.cpus, NEW.held_cpus),
                           reserved_memory_bytes = reserved_memory_bytes + GREATEST(NEW.memory_bytes, NEW.held_memory_bytes),
                           reserved_disk_bytes = reserved_disk_bytes + NEW.disk_bytes
          WHERE id = NEW.host_id;
        END IF;
        RETURN NULL;
      END
      $fn$`);
    await q.query(`DROP TRIGGER containers_host_reservations ON containers`);
    await q.query(`
      CREATE TRIGGER containers_host_reservations
        AFTER INSERT OR DELETE OR UPDATE OF host_id, cpus, memory_bytes, disk_bytes, destroyed_at, held_cpus,
          held_memory_bytes ON containers
        FOR EACH ROW EXECUTE FUNCTION berth_host_reservations()`);
    // The container's row is locked first, by a statement of its own: the aggregate after it then reads
    // from a snapshot taken once the lock is held, and sees the resize jobs of any transaction that held
    // it before (an UPDATE … FROM (aggregate) that waits for the row lock keeps the aggregate it read before
    // waiting: a resize accepted meanwhile by the API, which holds that row, would be left out).
    await q.query(`
      CREATE FUNCTION berth_resize_holds() RETURNS trigger LANGUAGE plpgsql AS $fn$
      BEGIN
        PERFORM 1 FROM containers WHERE id = NEW.container_id FOR NO KEY UPDATE;
        UPDATE containers c SET held_cpus = h.cpus, held_memory_bytes = h.mem
        FROM (SELECT COALESCE(max((j.params -> 'resources' ->> 'cpus')::numeric), 0) AS cpus,
                     COALESCE(max((j.params -> 'resources' ->> 'memoryBytes')::bigint), 0) AS mem
              FROM jobs j
              WHERE j.container_id = NEW.container_id AND j.kind = 'container.resize'
                AND j.state IN ('queued', 'active', 'waiting-retry')) h
        WHERE c.id = NEW.container_id AND (c.held_cpus, c.held_memory_bytes) IS DISTINCT FROM (h.cpus, h.mem);
        RETURN NULL;
      END
      $fn$`);
    // Only resize jobs, and only when one becomes pending or stops being pending (accepted, retried, ended):
    // the conditions are all the other jobs, and a resize's claim, pay.
    await q.query(`
      CREATE TRIGGER jobs_resize_holds_new
        AFTER INSERT ON jobs
        FOR EACH ROW WHEN (NEW.kind = 'container.resize' AND NEW.container_id IS NOT NULL)
        EXECUTE FUNCTION berth_resize_holds()`);
    await q.query(`
      CREATE TRIGGER jobs_resize_holds
        AFTER UPDATE OF state ON jobs
        FOR EACH ROW WHEN (NEW.kind = 'container.resize' AND NEW.container_id IS NOT NULL
          AND (OLD.state IN ('queued', 'active', 'waiting-retry'))
              IS DISTINCT FROM (NEW.state IN ('queued', 'active', 'waiting-retry')))
        EXECUTE FUNCTION berth_resize_holds()`);
    // Resizes accepted before this migration and not yet run hold their room from now on.
    await q.query(`LOCK TABLE containers IN SHARE ROW EXCLUSIVE MODE`);
    await q.query(`
      UPDATE containers c SET held_cpus = h.cpus, held_memory_bytes = h.mem
      FROM (SELECT j.container_id, COALESCE(max((j.params -> 'resources' ->> 'cpus')::numeric), 0) AS cpus,
                   COALESCE(max((j.params -> 'resources' ->> 'memoryBytes')::bigint), 0) AS mem
            FROM jobs j
            WHERE j.kind = 'container.resize' AND j.state IN ('queued', 'active', 'waiting-retry')
            GROUP BY j.container_id) h
      WHERE c.id = h.container_id`);
  }

  async down(q: QueryRunner): Promise<void> {
    await q.query(`DROP TRIGGER jobs_resize_holds ON jobs`);
    await q.query(`DROP TRIGGER jobs_resize_holds_new ON jobs`);
    await q.query(`DROP FUNCTION berth_resize_holds()`);
    await q.query(`LOCK TABLE containers IN SHARE ROW EXCLUSIVE MODE`);
    // Holds released (the counters follow through the trigger), then the columns and the old trigger.
    await q.query(
      `UPDATE containers SET held_cpus = 0, held_memory_bytes = 0 WHERE held_cpus <> 0 OR held_memory_bytes <> 0`,
    );
    await q.query(`DROP TRIGGER containers_host_reservations ON containers`);
    await q.query(HOST_RESERVATIONS_FUNCTION);
    await q.query(HOST_RESERVATIONS_TRIGGER);
    await q.query(`ALTER TABLE containers DROP COLUMN held_cpus, DROP COLUMN held_memory_bytes`);
  }
}
