-- errand schema, version 1: jobs, their tries, workers.
-- Times are seconds since the Unix epoch (REAL), read from SQLite's own clock.

CREATE TABLE errand_jobs (
    id              INTEGER PRIMARY KEY,
    uuid            TEXT NOT NULL UNIQUE,
    task            TEXT NOT NULL,
    description     TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('wait_dependencies', 'pending', 'enqueued',
                                                   'started', 'done', 'failed', 'cancelled')),
    channel         TEXT NOT NULL DEFAULT 'root',
    priority        INTEGER NOT NULL DEFAULT 10,
    eta             REAL NOT NULL,
    args            TEXT NOT NULL DEFAULT '[]',
    kwargs          TEXT NOT NULL DEFAULT '{}',
    context         TEXT NOT NULL DEFAULT '{}',
    max_retries     INTEGER NOT NULL DEFAULT 5 CHECK (max_retries >= 0),
    retries         INTEGER NOT NULL DEFAULT 0,
    retry_pattern   TEXT,
    timeout         REAL CHECK (timeout > 0),
    attempt         INTEGER NOT NULL DEFAULT 0,
    result          TEXT,
    error_type      TEXT,
    error_message   TEXT,
    progress        INTEGER NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
    status_message  TEXT,
    worker_id       TEXT,
    created_at      REAL NOT NULL,
    enqueued_at     REAL,
    started_at      REAL,
    ended_at        REAL
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
    id              INTEGER PRIMARY KEY,
    job_id          INTEGER NOT NULL REFERENCES errand_jobs (id) ON DELETE CASCADE,
    attempt         INTEGER NOT NULL,
    worker_id       TEXT,
    pid             INTEGER,
    started_at      REAL,
    ended_at        REAL,
    duration        REAL,
    outcome         TEXT CHECK (outcome IN ('success', 'error', 'timeout', 'crash', 'cancelled',
                                            'interrupted')),
    result          TEXT,
    error_type      TEXT,
    error_message   TEXT,
    traceback       TEXT,
    memory_mb       REAL,
    UNIQUE (job_id, attempt)
);

-- Tries still open (no outcome yet), for rescue.
CREATE INDEX errand_attempts_open ON errand_attempts (worker_id) WHERE outcome IS NULL;

CREATE TABLE errand_workers (
    id              TEXT PRIMARY KEY,
    host            TEXT NOT NULL,
    pid             INTEGER NOT NULL,
    concurrency     INTEGER NOT NULL,
    channels        TEXT,
    version         TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('running', 'stopped', 'dead')),
    jobs_done       INTEGER NOT NULL DEFAULT 0,
    started_at      REAL NOT NULL,
    heartbeat_at    REAL NOT NULL
);
