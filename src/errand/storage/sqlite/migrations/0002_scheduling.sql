-- errand schema, version 2: identity keys, job dependencies, channel settings.

-- A job's identity key is unique among the jobs that have not run yet (never claimed and
-- still waiting), so enqueuing the same key twice returns the first job, race-free.
ALTER TABLE errand_jobs ADD COLUMN identity_key TEXT;
CREATE UNIQUE INDEX errand_jobs_identity ON errand_jobs (identity_key)
    WHERE identity_key IS NOT NULL AND attempt = 0
      AND state IN ('wait_dependencies', 'pending');
CREATE INDEX errand_jobs_identity_any ON errand_jobs (identity_key)
    WHERE identity_key IS NOT NULL;

-- Running jobs by channel, for capacities.
CREATE INDEX errand_jobs_running_channel ON errand_jobs (channel)
    WHERE state IN ('enqueued', 'started');
-- Failed jobs by channel, for sequential channels.
CREATE INDEX errand_jobs_failed_channel ON errand_jobs (channel) WHERE state = 'failed';

-- job_id waits for depends_on to be done.
CREATE TABLE errand_dependencies (
    job_id      INTEGER NOT NULL REFERENCES errand_jobs (id) ON DELETE CASCADE,
    depends_on  INTEGER NOT NULL REFERENCES errand_jobs (id) ON DELETE CASCADE,
    PRIMARY KEY (job_id, depends_on)
);
CREATE INDEX errand_dependencies_parent ON errand_dependencies (depends_on);

-- Channel capacities and pauses, shared by every worker; changed at run time.
CREATE TABLE errand_channels (
    name        TEXT PRIMARY KEY,
    capacity    INTEGER CHECK (capacity >= 1),
    sequential  INTEGER NOT NULL DEFAULT 0,
    paused      INTEGER NOT NULL DEFAULT 0,
    updated_at  REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0)
);
