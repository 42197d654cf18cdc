-- errand schema, version 1: jobs, their tries, workers.

CREATE TABLE errand_jobs (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    uuid            uuid NOT NULL UNIQUE,
    task            text NOT NULL,
    description     text NOT NULL,
    state           text NOT NULL CHECK (state IN ('wait_dependencies', 'pending', 'enqueued',
                                                   'started', 'done', 'failed', 'cancelled')),
    channel         text NOT NULL DEFAULT 'root',
    priority        integer NOT NULL DEFAULT 10,
    eta             timestamptz NOT NULL DEFAULT now(),
    args            jsonb NOT NULL DEFAULT '[]',
    kwargs          jsonb NOT NULL DEFAULT '{}',
    context         jsonb NOT NULL DEFAULT '{}',
    max_retries     integer NOT NULL DEFAULT 5 CHECK (max_retries >= 0),
    retries         integer NOT NULL DEFAULT 0,
    retry_pattern   jsonb,
    timeout         double precision CHECK (timeout > 0),
    attempt         integer NOT NULL DEFAULT 0,
    result          jsonb,
    error_type      text,
    error_message   text,
    progress        smallint NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
    status_message  text,
    worker_id       text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    enqueued_at     timestamptz,
    started_at      timestamptz,
    ended_at        timestamptz
);

-- Ready jobs in claim order; finished jobs are not in it, so history never slows claims.
CREATE INDEX errand_jobs_ready ON errand_jobs (priority, eta, id) WHERE state = 'pending';
-- Earliest eta among pending jobs, for an idle worker's next wake-up.
CREATE INDEX errand_jobs_pending_eta ON errand_jobs (eta) WHERE state = 'pending';
-- Jobs in a worker's hands, for heartbeats and rescue.
CREATE INDEX errand_jobs_running ON errand_jobs (worker_id) WHERE state IN ('enqueued', 'started');
-- Listing by state, newest first, and purging old finished jobs.
CREATE INDEX errand_jobs_state ON errand_jobs (state, id);

CREATE TABLE errand_attempts (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id          bigint NOT NULL REFERENCES errand_jobs (id) ON DELETE CASCADE,
    attempt         integer NOT NULL,
    worker_id       text,
    pid             integer,
    started_at      timestamptz,
    ended_at        timestamptz,
    duration        double precision,
    outcome         text CHECK (outcome IN ('success', 'error', 'timeout', 'crash', 'cancelled',
                                            'interrupted')),
    result          jsonb,
    error_type      text,
    error_message   text,
    traceback       text,
    memory_mb       double precision,
    UNIQUE (job_id, attempt)
);

-- Tries still open (no outcome yet), for rescue.
CREATE INDEX errand_attempts_open ON errand_attempts (worker_id) WHERE outcome IS NULL;

CREATE TABLE errand_workers (
    id              text PRIMARY KEY,
    host            text NOT NULL,
    pid             integer NOT NULL,
    concurrency     integer NOT NULL,
    channels        text,
    version         text NOT NULL,
    state           text NOT NULL CHECK (state IN ('running', 'stopped', 'dead')),
    jobs_done       bigint NOT NULL DEFAULT 0,
    started_at      timestamptz NOT NULL DEFAULT now(),
    heartbeat_at    timestamptz NOT NULL DEFAULT now()
);

-- Wake idle workers when jobs become ready, whoever wrote them (errand, psql, another
-- language). The payload is the channel name only; identical notifications of one
-- transaction are folded into one by PostgreSQL.
CREATE FUNCTION errand_notify_ready() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('errand_jobs', ready.channel)
    FROM (SELECT DISTINCT channel FROM errand_changed_rows
          WHERE state = 'pending' AND eta <= now()) AS ready;
    RETURN NULL;
END
$$;

CREATE TRIGGER errand_jobs_inserted AFTER INSERT ON errand_jobs
    REFERENCING NEW TABLE AS errand_changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION errand_notify_ready();

CREATE TRIGGER errand_jobs_updated AFTER UPDATE ON errand_jobs
    REFERENCING NEW TABLE AS errand_changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION errand_notify_ready();
