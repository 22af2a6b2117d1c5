import type { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * The first schema. Written as explicit SQL so that what the database enforces (checks, the append-only
 * audit trail, the outbox notification) is visible in one place.
 */
export class InitialSchema1764000000000 implements MigrationInterface {
  name = 'InitialSchema1764000000000';

  async up(q: QueryRunner): Promise<void> {
    await q.query(`
      CREATE TABLE tenants (
        id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        name text NOT NULL UNIQUE,
        created_at timestamptz NOT NULL DEFAULT now()
      );

      CREATE TABLE api_keys (
        id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        tenant_id uuid REFERENCES tenants(id) ON DELETE RESTRICT,
        name text NOT NULL,
        prefix text NOT NULL UNIQUE,
        secret_hash text NOT NULL,
        scopes text[] NOT NULL DEFAULT '{}',
        created_at timestamptz NOT NULL DEFAULT now(),
        last_used_at timestamptz,
        revoked_at timestamptz
      );

      CREATE TABLE hosts (
        id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        name text NOT NULL UNIQUE,
        state text NOT NULL DEFAULT 'online' CHECK (state IN ('online', 'offline')),
        draining boolean NOT NULL DEFAULT false,
        capabilities jsonb NOT NULL DEFAULT '{}',
        cpu_count integer NOT NULL CHECK (cpu_count > 0),
        memory_bytes bigint NOT NULL CHECK (memory_bytes > 0),
        disk_bytes bigint NOT NULL DEFAULT 0 CHECK (disk_bytes >= 0),
        kernel_version text NOT NULL,
        cgroup_version smallint NOT NULL CHECK (cgroup_version IN (1, 2)),
        storage_drivers text[] NOT NULL DEFAULT '{}',
        last_heartbeat_at timestamptz NOT NULL DEFAULT now(),
        registered_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now()
      );
      CREATE INDEX hosts_state_heartbeat_idx ON hosts (state, last_heartbeat_at);

      CREATE TABLE templates (
        id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        name text NOT NULL UNIQUE,
        source text NOT NULL,
        size_bytes bigint NOT NULL DEFAULT 0,
        created_at timestamptz NOT NULL DEFAULT now()
      );

      CREATE TABLE template_replicas (
        template_id uuid NOT NULL REFERENCES templates(id) ON DELETE CASCADE,
        host_id uuid NOT NULL REFERENCES hosts(id) ON DELETE CASCADE,
        state text NOT NULL CHECK (state IN ('importing', 'ready', 'failed')),
        storage_driver text,
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (template_id, host_id)
      );
      CREATE INDEX template_replicas_host_idx ON template_replicas (host_id, state);

      CREATE TABLE campaigns (
        id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        tenant_id uuid REFERENCES tenants(id),
        template_id uuid REFERENCES templates(id),
        spec jsonb NOT NULL,
        state text NOT NULL CHECK (state IN ('running', 'paused', 'cancelled', 'completed', 'failed')),
        total integer NOT NULL DEFAULT 0,
        done integer NOT NULL DEFAULT 0,
        failed integer NOT NULL DEFAULT 0,
        requested_by text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        finished_at timestamptz
      );

      CREATE TABLE containers (
        id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        tenant_id uuid REFERENCES tenants(id),
        name text NOT NULL CHECK (name ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'),
        host_id uuid REFERENCES hosts(id),
        template_id uuid REFERENCES templates(id),
        state text NOT NULL CHECK (state IN ('creating', 'stopped', 'running', 'paused', 'suspended',
          'destroying', 'destroyed', 'error')),
        cpus numeric(6, 2) NOT NULL CHECK (cpus > 0),
        memory_bytes bigint NOT NULL CHECK (memory_bytes > 0),
        disk_bytes bigint NOT NULL CHECK (disk_bytes > 0),
        pids_max integer NOT NULL CHECK (pids_max > 0),
        network_mode text NOT NULL DEFAULT 'none' CHECK (network_mode IN ('none', 'bridge')),
        ip_address inet,
        job_seq integer NOT NULL DEFAULT 0,
        last_job_id uuid,
        error_code text,
        version integer NOT NULL DEFAULT 1,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        destroyed_at timestamptz
      );
      -- Names are unique per tenant among containers that still exist (a destroyed name may be reused).
      CREATE UNIQUE INDEX containers_tenant_name_live_uq
        ON containers (COALESCE(tenant_id, '00000000-0000-0000-0000-000000000000'::uuid), name)
        WHERE destroyed_at IS NULL;
      CREATE INDEX containers_host_state_idx ON containers (host_id, state);
      CREATE INDEX containers_state_idx ON containers (state, created_at);
      CREATE INDEX containers_tenant_idx ON containers (tenant_id, created_at);

      CREATE TABLE jobs (
        id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        kind text NOT NULL,
        state text NOT NULL CHECK (state IN ('queued', 'active', 'waiting-retry', 'completed', 'failed',
          'cancelled')),
        tenant_id uuid REFERENCES tenants(id),
        container_id uuid REFERENCES containers(id),
        host_id uuid REFERENCES hosts(id),
        campaign_id uuid REFERENCES campaigns(id),
        container_seq integer,
        params jsonb NOT NULL DEFAULT '{}',
        result jsonb,
        progress jsonb,
        error_code text,
        error_message text,
        error_step text,
        attempts integer NOT NULL DEFAULT 0,
        max_attempts integer NOT NULL DEFAULT 1 CHECK (max_attempts > 0),
        idempotency_key text,
        requested_by text NOT NULL,
        request_id text,
        created_at timestamptz NOT NULL DEFAULT now(),
        started_at timestamptz,
        finished_at timestamptz,
        updated_at timestamptz NOT NULL DEFAULT now()
      );
      -- Admin queries (DESIGN.md §7): by state, kind, container, campaign, host, newest first.
      CREATE INDEX jobs_created_idx ON jobs (created_at DESC, id DESC);
      CREATE INDEX jobs_state_created_idx ON jobs (state, created_at DESC);
      CREATE INDEX jobs_kind_created_idx ON jobs (kind, created_at DESC);
      CREATE INDEX jobs_container_created_idx ON jobs (container_id, created_at DESC);
      CREATE INDEX jobs_campaign_state_idx ON jobs (campaign_id, state) WHERE campaign_id IS NOT NULL;
      CREATE INDEX jobs_host_state_idx ON jobs (host_id, state);
      CREATE UNIQUE INDEX jobs_container_seq_uq ON jobs (container_id, container_seq)
        WHERE container_seq IS NOT NULL;

      CREATE TABLE audit_events (
        id bigserial PRIMARY KEY,
        occurred_at timestamptz NOT NULL DEFAULT now(),
        actor text NOT NULL,
        action text NOT NULL,
        subject_type text NOT NULL,
        subject_id uuid,
        job_id uuid,
        request_id text,
        data jsonb NOT NULL DEFAULT '{}'
      );
      CREATE INDEX audit_events_subject_idx ON audit_events (subject_id, id);
      CREATE INDEX audit_events_job_idx ON audit_events (job_id, id) WHERE job_id IS NOT NULL;
      CREATE INDEX audit_events_occurred_idx ON audit_events (occurred_at);

      -- The audit trail is append-only in the database itself, whoever connects.
      CREATE FUNCTION berth_audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $fn$
      BEGIN
        RAISE EXCEPTION 'audit_events is append-only: % is not allowed', TG_OP
          USING ERRCODE = 'insufficient_privilege';
      END
      $fn$;
      CREATE TRIGGER audit_events_no_update_delete BEFORE UPDATE OR DELETE ON audit_events
        FOR EACH ROW EXECUTE FUNCTION berth_audit_events_append_only();
      CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
        FOR EACH STATEMENT EXECUTE FUNCTION berth_audit_events_append_only();

      CREATE TABLE outbox (
        id bigserial PRIMARY KEY,
        queue text NOT NULL,
        job_name text NOT NULL,
        job_id uuid NOT NULL,
        payload jsonb NOT NULL,
        attempts integer NOT NULL DEFAULT 0,
        last_error text,
        created_at timestamptz NOT NULL DEFAULT now(),
        published_at timestamptz
      );
      CREATE INDEX outbox_unpublished_idx ON outbox (id) WHERE published_at IS NULL;

      -- Wake relays at once on new rows; they also poll slowly as a safety net.
      CREATE FUNCTION berth_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $fn$
      BEGIN
        PERFORM pg_notify('berth_outbox', NEW.id::text);
        RETURN NEW;
      END
      $fn$;
      CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
        FOR EACH ROW EXECUTE FUNCTION berth_outbox_notify();

      CREATE TABLE idempotency_keys (
        scope text NOT NULL,
        key text NOT NULL,
        request_hash text NOT NULL,
        method text NOT NULL,
        path text NOT NULL,
        state text NOT NULL CHECK (state IN ('in_flight', 'done')),
        response_status integer,
        response_headers jsonb,
        response_body jsonb,
        created_at timestamptz NOT NULL DEFAULT now(),
        expires_at timestamptz NOT NULL,
        PRIMARY KEY (scope, key)
      );
      CREATE INDEX idempotency_keys_expires_idx ON idempotency_keys (expires_at);

      CREATE TABLE webhook_endpoints (
        id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        tenant_id uuid REFERENCES tenants(id) ON DELETE CASCADE,
        url text NOT NULL,
        secret text NOT NULL,
        events text[] NOT NULL DEFAULT '{}',
        active boolean NOT NULL DEFAULT true,
        created_at timestamptz NOT NULL DEFAULT now()
      );
      CREATE INDEX webhook_endpoints_tenant_idx ON webhook_endpoints (tenant_id) WHERE active;

      CREATE TABLE webhook_deliveries (
        id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        endpoint_id uuid NOT NULL REFERENCES webhook_endpoints(id) ON DELETE CASCADE,
        job_id uuid REFERENCES jobs(id),
        event text NOT NULL,
        payload jsonb NOT NULL,
        state text NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
        attempts integer NOT NULL DEFAULT 0,
        last_status integer,
        last_error text,
        next_attempt_at timestamptz NOT NULL DEFAULT now(),
        created_at timestamptz NOT NULL DEFAULT now(),
        delivered_at timestamptz
      );
      CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (state, next_attempt_at);
      CREATE INDEX webhook_deliveries_endpoint_idx ON webhook_deliveries (endpoint_id, created_at);
    `);
  }

  async down(q: QueryRunner): Promise<void> {
    await q.query(`
      DROP TABLE webhook_deliveries;
      DROP TABLE webhook_endpoints;
      DROP TABLE idempotency_keys;
      DROP TABLE outbox;
      DROP FUNCTION berth_outbox_notify();
      DROP TABLE audit_events;
      DROP FUNCTION berth_audit_events_append_only();
      DROP TABLE jobs;
      DROP TABLE containers;
      DROP TABLE campaigns;
      DROP TABLE template_replicas;
      DROP TABLE templates;
      DROP TABLE hosts;
      DROP TABLE api_keys;
      DROP TABLE tenants;
    `);
  }
}
