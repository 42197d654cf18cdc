-- Every statement errand sends to SQLite. Blocks are named (`-- name: x`) like the
-- PostgreSQL file; a block may hold several statements, run in one transaction, and its
-- first statement's rows are its result. Times are epoch seconds from SQLite's clock:
-- (julianday('now') - 2440587.5) * 86400.0. Batches arrive as one JSON document.

-- name: connection_setup
PRAGMA busy_timeout = 20;
PRAGMA journal_mode = WAL;
PRAGMA synchronous = FULL;
PRAGMA foreign_keys = ON;

-- name: watch_changes
-- Changes whenever another connection commits: polling it costs no I/O.
PRAGMA data_version;

-- name: database_identity
SELECT file FROM pragma_database_list WHERE name = 'main';

-- name: schema_table_exists
SELECT count(*) > 0 FROM sqlite_master
WHERE type = 'table' AND name = 'errand_schema_version';

-- name: create_schema_table
CREATE TABLE IF NOT EXISTS errand_schema_version (
    version    INTEGER PRIMARY KEY,
    applied_at REAL NOT NULL
);

-- name: lock_schema
BEGIN IMMEDIATE;

-- name: schema_version
SELECT coalesce(max(version), 0) FROM errand_schema_version;

-- name: record_version
INSERT INTO errand_schema_version (version, applied_at)
VALUES (:version, (julianday('now') - 2440587.5) * 86400.0);

-- name: enqueue_jobs
-- A job whose identity key matches a job that has not run yet is skipped here (the
-- caller then reads that job with find_by_identity). `WHERE true` tells SQLite's parser
-- that ON CONFLICT belongs to the INSERT.
INSERT INTO errand_jobs (uuid, task, description, state, channel, priority, eta, args, kwargs,
                         context, max_retries, retry_pattern, timeout, identity_key,
                         created_at)
SELECT json_extract(j.value, '$.uuid'), json_extract(j.value, '$.task'),
       json_extract(j.value, '$.description'),
       CASE WHEN json_extract(j.value, '$.waits') THEN 'wait_dependencies' ELSE 'pending' END,
       json_extract(j.value, '$.channel'), json_extract(j.value, '$.priority'),
       coalesce(json_extract(j.value, '$.eta_at'),
                (julianday('now') - 2440587.5) * 86400.0 + json_extract(j.value, '$.eta_in')),
       json_extract(j.value, '$.args'), json_extract(j.value, '$.kwargs'),
       json_extract(j.value, '$.context'), json_extract(j.value, '$.max_retries'),
       json_extract(j.value, '$.retry_pattern'), json_extract(j.value, '$.timeout'),
       json_extract(j.value, '$.identity_key'), (julianday('now') - 2440587.5) * 86400.0
FROM json_each(:jobs) AS j
WHERE true
ON CONFLICT (identity_key)
    WHERE identity_key IS NOT NULL AND attempt = 0
      AND state IN ('wait_dependencies', 'pending')
    DO NOTHING
RETURNING id, uuid, task, description, state, channel, priority, eta, args, kwargs, context,
          max_retries, retries, retry_pattern, timeout, attempt, result, error_type,
          error_message, progress, status_message, worker_id, created_at, started_at,
          ended_at, identity_key;

-- name: add_dependencies
INSERT INTO errand_dependencies (job_id, depends_on)
SELECT child.id, parent.id
FROM json_each(:dependencies) AS d
JOIN errand_jobs child ON child.uuid = json_extract(d.value, '$.job')
JOIN errand_jobs parent ON parent.uuid = json_extract(d.value, '$.parent');

-- name: find_by_identity
SELECT id, uuid, task, description, state, channel, priority, eta, args, kwargs, context,
       max_retries, retries, retry_pattern, timeout, attempt, result, error_type,
       error_message, progress, status_message, worker_id, created_at, started_at, ended_at,
       identity_key
FROM errand_jobs
WHERE id IN (SELECT max(id) FROM errand_jobs
             WHERE identity_key IN (SELECT value FROM json_each(:keys))
             GROUP BY identity_key);

-- name: get_job
SELECT id, uuid, task, description, state, channel, priority, eta, args, kwargs, context,
       max_retries, retries, retry_pattern, timeout, attempt, result, error_type,
       error_message, progress, status_message, worker_id, created_at, started_at, ended_at,
       identity_key
FROM errand_jobs WHERE uuid = :uuid;

-- name: list_jobs
SELECT id, uuid, task, description, state, channel, priority, eta, args, kwargs, context,
       max_retries, retries, retry_pattern, timeout, attempt, result, error_type,
       error_message, progress, status_message, worker_id, created_at, started_at, ended_at,
       identity_key
FROM errand_jobs
WHERE (:state IS NULL OR state = :state)
  AND (:channel IS NULL OR channel = :channel
       OR substr(channel, 1, length(:channel) + 1) = :channel || '.')
  AND (:task IS NULL OR task = :task)
ORDER BY id DESC
LIMIT :limit;

-- name: list_attempts
-- Ended tries have their row; a running try is read from the job's row.
SELECT job_id, attempt, worker_id, pid, started_at, ended_at, duration, outcome, result,
       error_type, error_message, traceback, memory_mb
FROM errand_attempts WHERE job_id = :job_id
UNION ALL
SELECT id, attempt, worker_id, pid, CASE WHEN state = 'started' THEN started_at END, NULL,
       NULL, NULL, NULL, NULL, NULL, NULL, NULL
FROM errand_jobs WHERE id = :job_id AND state IN ('enqueued', 'started')
ORDER BY attempt;

-- name: uuids_in_state
SELECT uuid FROM errand_jobs WHERE state = :state ORDER BY id;

-- name: cancel_jobs
-- Cancelling a job cancels every job that depends on it, transitively.
WITH RECURSIVE targets(id) AS (
    SELECT id FROM errand_jobs
    WHERE uuid IN (SELECT value FROM json_each(:uuids))
      AND state IN (SELECT value FROM json_each(:from_states))
    UNION
    SELECT d.job_id FROM errand_dependencies d JOIN targets t ON d.depends_on = t.id
)
UPDATE errand_jobs
SET state = 'cancelled', ended_at = (julianday('now') - 2440587.5) * 86400.0
WHERE id IN (SELECT id FROM targets)
  AND state IN (SELECT value FROM json_each(:from_states))
RETURNING uuid;

-- name: requeue_jobs
UPDATE errand_jobs
SET state = 'pending', eta = min(eta, (julianday('now') - 2440587.5) * 86400.0), retries = 0,
    result = NULL, error_type = NULL, error_message = NULL, progress = 0,
    status_message = NULL, ended_at = NULL
WHERE uuid IN (SELECT value FROM json_each(:uuids))
  AND state IN (SELECT value FROM json_each(:from_states))
RETURNING uuid;

-- name: set_jobs_done
UPDATE errand_jobs
SET state = 'done', result = :result, error_type = NULL, error_message = NULL,
    progress = 100, ended_at = (julianday('now') - 2440587.5) * 86400.0
WHERE uuid IN (SELECT value FROM json_each(:uuids))
  AND state IN (SELECT value FROM json_each(:from_states))
RETURNING uuid, id;

-- name: release_children
-- Children of the given jobs whose parents are now all done become pending (writes take
-- turns on SQLite, so every parent's state is current here).
UPDATE errand_jobs SET state = 'pending'
WHERE state = 'wait_dependencies'
  AND id IN (SELECT job_id FROM errand_dependencies
             WHERE depends_on IN (SELECT value FROM json_each(:ids)))
  AND NOT EXISTS (SELECT 1 FROM errand_dependencies d
                  JOIN errand_jobs parent ON parent.id = d.depends_on
                  WHERE d.job_id = errand_jobs.id AND parent.state <> 'done');

-- name: purge_jobs
DELETE FROM errand_jobs
WHERE id IN (SELECT id FROM errand_jobs
             WHERE state IN (SELECT value FROM json_each(:states))
               AND ended_at < (julianday('now') - 2440587.5) * 86400.0 - :older_than
             LIMIT :limit);

-- name: channel_counts
SELECT channel, state, count(*)
FROM errand_jobs
WHERE state IN ('wait_dependencies', 'pending', 'enqueued', 'started')
GROUP BY channel, state
ORDER BY channel, state;

-- name: stats
SELECT task, state, count(*), avg(ended_at - started_at), max(ended_at - started_at)
FROM errand_jobs
WHERE created_at >= (julianday('now') - 2440587.5) * 86400.0 - :seconds
GROUP BY task, state
ORDER BY task, state;

-- name: list_workers
SELECT w.id, w.host, w.pid, w.started_at, w.heartbeat_at,
       (julianday('now') - 2440587.5) * 86400.0 - w.heartbeat_at,
       w.concurrency, w.state, w.jobs_done,
       (SELECT count(*) FROM errand_jobs j
        WHERE j.worker_id = w.id AND j.state IN ('enqueued', 'started'))
FROM errand_workers w
ORDER BY w.started_at DESC;

-- name: register_worker
INSERT INTO errand_workers (id, host, pid, concurrency, channels, version, state, started_at,
                            heartbeat_at)
VALUES (:id, :host, :pid, :concurrency, :channels, :version, 'running',
        (julianday('now') - 2440587.5) * 86400.0, (julianday('now') - 2440587.5) * 86400.0)
ON CONFLICT (id) DO UPDATE
SET state = 'running', heartbeat_at = (julianday('now') - 2440587.5) * 86400.0;

-- name: touch_worker
UPDATE errand_workers
SET heartbeat_at = (julianday('now') - 2440587.5) * 86400.0, state = 'running'
WHERE id = :worker
RETURNING id;

-- name: lost_jobs
SELECT json_extract(r.value, '$.id')
FROM json_each(:running) AS r
LEFT JOIN errand_jobs j
       ON j.id = json_extract(r.value, '$.id') AND j.attempt = json_extract(r.value, '$.attempt')
      AND j.worker_id = :worker AND j.state IN ('enqueued', 'started')
WHERE j.id IS NULL;

-- name: release_unknown
-- Jobs held for this worker that it does not run (a claim whose answer was lost with the
-- connection): pending again, their try written as interrupted, not counted as a retry.
INSERT INTO errand_attempts (job_id, attempt, worker_id, pid, started_at, ended_at, outcome,
                             error_type, error_message)
SELECT id, attempt, worker_id, pid, CASE WHEN state = 'started' THEN started_at END,
       (julianday('now') - 2440587.5) * 86400.0, 'interrupted', 'ClaimLost',
       'the claim reached the database but its answer never reached the worker'
FROM errand_jobs
WHERE worker_id = :worker AND state IN ('enqueued', 'started')
  AND NOT EXISTS (SELECT 1 FROM json_each(:running) AS r
                  WHERE json_extract(r.value, '$.id') = errand_jobs.id
                    AND json_extract(r.value, '$.attempt') = errand_jobs.attempt);
UPDATE errand_jobs SET state = 'pending', eta = min(eta, (julianday('now') - 2440587.5) * 86400.0)
WHERE worker_id = :worker AND state IN ('enqueued', 'started')
  AND NOT EXISTS (SELECT 1 FROM json_each(:running) AS r
                  WHERE json_extract(r.value, '$.id') = errand_jobs.id
                    AND json_extract(r.value, '$.attempt') = errand_jobs.attempt)
RETURNING id;

-- name: unclaim_jobs
-- Jobs a stopping worker claimed ahead and never started: pending again, as if never
-- claimed (their try number is taken back; a try has no row before it ends).
UPDATE errand_jobs SET state = 'pending', attempt = attempt - 1, worker_id = NULL
WHERE worker_id = :worker AND state = 'enqueued'
  AND EXISTS (SELECT 1 FROM json_each(:jobs) AS r
              WHERE json_extract(r.value, '$.id') = errand_jobs.id
                AND json_extract(r.value, '$.attempt') = errand_jobs.attempt);

-- name: stop_worker
UPDATE errand_workers
SET state = 'stopped', heartbeat_at = (julianday('now') - 2440587.5) * 86400.0
WHERE id = :worker;

-- name: claim_jobs
UPDATE errand_jobs
SET state = 'enqueued', attempt = attempt + 1, worker_id = :worker, pid = NULL,
    enqueued_at = (julianday('now') - 2440587.5) * 86400.0, progress = 0,
    status_message = NULL
WHERE id IN (SELECT id FROM errand_jobs INDEXED BY errand_jobs_ready
             WHERE state = 'pending' AND eta <= (julianday('now') - 2440587.5) * 86400.0
             ORDER BY priority, eta, id
             LIMIT :limit)
RETURNING id, uuid, task, args, kwargs, context, attempt, retries, max_retries, retry_pattern,
          timeout, channel,
          EXISTS (SELECT 1 FROM errand_dependencies d WHERE d.job_id = errand_jobs.id),
          EXISTS (SELECT 1 FROM errand_dependencies d WHERE d.depends_on = errand_jobs.id);

-- name: claim_gated
-- Used inside the claim transaction once the running counts show room for :limit more
-- jobs under every capacity in :caps ({"root.mail": 2}); the gate re-checks it.
UPDATE errand_jobs
SET state = 'enqueued', attempt = attempt + 1, worker_id = :worker, pid = NULL,
    enqueued_at = (julianday('now') - 2440587.5) * 86400.0, progress = 0, status_message = NULL
WHERE id IN (SELECT id FROM errand_jobs INDEXED BY errand_jobs_ready
             WHERE state = 'pending' AND eta <= (julianday('now') - 2440587.5) * 86400.0
               AND NOT EXISTS (
                   SELECT 1 FROM json_each(:caps) AS cap
                   WHERE :limit + (SELECT count(*) FROM errand_jobs r
                                   WHERE r.state IN ('enqueued', 'started')
                                     AND (r.channel = cap.key
                                          OR substr(r.channel, 1, length(cap.key) + 1)
                                             = cap.key || '.')) > cap.value)
             ORDER BY priority, eta, id
             LIMIT :limit)
RETURNING id, uuid, task, args, kwargs, context, attempt, retries, max_retries, retry_pattern,
          timeout, channel,
          EXISTS (SELECT 1 FROM errand_dependencies d WHERE d.job_id = errand_jobs.id),
          EXISTS (SELECT 1 FROM errand_dependencies d WHERE d.depends_on = errand_jobs.id);

-- name: lock_claims
-- Every write transaction here begins with BEGIN IMMEDIATE, which already makes claims
-- take turns; nothing more to lock.
SELECT 1;

-- name: running_by_channel
SELECT channel, count(*) FROM errand_jobs
WHERE state IN ('enqueued', 'started')
GROUP BY channel;

-- name: stuck_channels
-- Sequential channels holding a failed job, or a job waiting to be retried: they wait.
-- Each half reads its own partial index, never the whole history.
SELECT s.value FROM json_each(:sequential) AS s
WHERE EXISTS (SELECT 1 FROM errand_jobs AS j INDEXED BY errand_jobs_failed_channel
              WHERE j.state = 'failed'
                AND (j.channel = s.value
                     OR substr(j.channel, 1, length(s.value) + 1) = s.value || '.'))
   OR EXISTS (SELECT 1 FROM errand_jobs AS j INDEXED BY errand_jobs_pending_eta
              WHERE j.state = 'pending' AND j.eta > (julianday('now') - 2440587.5) * 86400.0 AND j.attempt > 0
                AND (j.channel = s.value
                     OR substr(j.channel, 1, length(s.value) + 1) = s.value || '.'));

-- name: ready_jobs
-- INDEXED BY: without statistics SQLite would sort every pending job instead.
SELECT id, channel, priority, eta FROM errand_jobs INDEXED BY errand_jobs_ready
WHERE state = 'pending' AND eta <= (julianday('now') - 2440587.5) * 86400.0
  AND NOT EXISTS (SELECT 1 FROM json_each(:blocked) AS b
                  WHERE channel = b.value
                     OR substr(channel, 1, length(b.value) + 1) = b.value || '.')
ORDER BY priority, eta, id
LIMIT :limit;

-- name: sequential_heads
-- The next job of each sequential channel: a job already tried (retried or requeued)
-- finishes its turn before the channel moves on, then priority, eta, creation.
SELECT head.id, head.name, j.priority, j.eta
FROM (SELECT s.value AS name,
             (SELECT id FROM errand_jobs
              WHERE state = 'pending' AND eta <= (julianday('now') - 2440587.5) * 86400.0
                AND (channel = s.value
                     OR substr(channel, 1, length(s.value) + 1) = s.value || '.')
              ORDER BY attempt > 0 DESC, priority, eta, id
              LIMIT 1) AS id
      FROM json_each(:names) AS s) AS head
JOIN errand_jobs j ON j.id = head.id;

-- name: claim_chosen
UPDATE errand_jobs
SET state = 'enqueued', attempt = attempt + 1, worker_id = :worker, pid = NULL,
    enqueued_at = (julianday('now') - 2440587.5) * 86400.0, progress = 0, status_message = NULL
WHERE id IN (SELECT value FROM json_each(:ids)) AND state = 'pending'
RETURNING id, uuid, task, args, kwargs, context, attempt, retries, max_retries, retry_pattern,
          timeout, channel,
          EXISTS (SELECT 1 FROM errand_dependencies d WHERE d.job_id = errand_jobs.id),
          EXISTS (SELECT 1 FROM errand_dependencies d WHERE d.depends_on = errand_jobs.id);

-- name: parent_results
SELECT d.job_id, parent.uuid, parent.result
FROM errand_dependencies d JOIN errand_jobs parent ON parent.id = d.depends_on
WHERE d.job_id IN (SELECT value FROM json_each(:ids));

-- name: channel_settings
SELECT name, capacity, sequential, paused FROM errand_channels ORDER BY name;

-- name: save_channel
INSERT INTO errand_channels (name, capacity, sequential) VALUES (:name, :capacity, :sequential)
ON CONFLICT (name) DO UPDATE
SET capacity = excluded.capacity, sequential = excluded.sequential, updated_at = (julianday('now') - 2440587.5) * 86400.0
RETURNING name;

-- name: pause_channel
INSERT INTO errand_channels (name, paused) VALUES (:name, :paused)
ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, updated_at = (julianday('now') - 2440587.5) * 86400.0
RETURNING name;

-- name: mark_started
UPDATE errand_jobs
SET state = 'started', started_at = (julianday('now') - 2440587.5) * 86400.0, pid = s.pid
FROM (SELECT json_extract(value, '$.id') AS id, json_extract(value, '$.attempt') AS attempt,
             json_extract(value, '$.pid') AS pid
      FROM json_each(:started)) AS s
WHERE errand_jobs.id = s.id AND errand_jobs.attempt = s.attempt
  -- `+`: look each job up by id; the worker and state indexes would pair every job of the
  -- worker with every entry (quadratic in the batch when jobs are claimed ahead).
  AND +errand_jobs.worker_id = :worker AND +errand_jobs.state = 'enqueued';

-- name: finish_jobs
UPDATE errand_jobs
SET state = f.state,
    retries = f.retries,
    eta = CASE WHEN f.state = 'pending'
               THEN (julianday('now') - 2440587.5) * 86400.0 + f.delay
               ELSE errand_jobs.eta END,
    result = CASE WHEN f.state = 'done' THEN f.result END,
    error_type = CASE WHEN f.state = 'done' THEN NULL ELSE f.error_type END,
    error_message = CASE WHEN f.state = 'done' THEN NULL ELSE f.error_message END,
    progress = CASE WHEN f.state = 'done' THEN 100 ELSE errand_jobs.progress END,
    started_at = CASE WHEN f.start_unwritten THEN (julianday('now') - 2440587.5) * 86400.0 - coalesce(f.duration, 0)
                      ELSE errand_jobs.started_at END,
    pid = f.pid,
    ended_at = CASE WHEN f.state IN ('done', 'failed', 'cancelled')
                    THEN (julianday('now') - 2440587.5) * 86400.0 END
FROM (SELECT json_extract(value, '$.id') AS id, json_extract(value, '$.attempt') AS attempt,
             json_extract(value, '$.state') AS state,
             json_extract(value, '$.pid') AS pid,
             json_extract(value, '$.start_unwritten') AS start_unwritten,
             json_extract(value, '$.duration') AS duration,
             json_extract(value, '$.retries') AS retries,
             json_extract(value, '$.delay') AS delay,
             json_extract(value, '$.result') AS result,
             json_extract(value, '$.error_type') AS error_type,
             json_extract(value, '$.error_message') AS error_message
      FROM json_each(:finishes)) AS f
WHERE errand_jobs.id = f.id AND errand_jobs.attempt = f.attempt
  -- `+`: look each job up by id (see mark_started).
  AND +errand_jobs.worker_id = :worker AND +errand_jobs.state IN ('enqueued', 'started')
RETURNING id, state = 'done' AND EXISTS (SELECT 1 FROM errand_dependencies d
                                         WHERE d.depends_on = errand_jobs.id);
-- changes() still counts the job rows the statement above updated.
UPDATE errand_workers SET jobs_done = jobs_done + changes() WHERE id = :worker;
-- The try's row, written once; the job's row above kept its id, attempt, worker and, when
-- it was written before, the try's start. The job may have left the try meanwhile
-- (cancelled): its try is written all the same. If the rescue wrote the row first (this
-- worker was taken for dead), the rescue's row stays.
INSERT INTO errand_attempts (job_id, attempt, worker_id, pid, started_at, ended_at, duration,
                             outcome, result, error_type, error_message, traceback, memory_mb)
SELECT f.id, f.attempt, :worker, f.pid,
       CASE WHEN f.start_unwritten
            THEN (julianday('now') - 2440587.5) * 86400.0 - coalesce(f.duration, 0)
            ELSE j.started_at END,
       (julianday('now') - 2440587.5) * 86400.0, f.duration, f.outcome, f.result, f.error_type,
       f.error_message, f.traceback, f.memory_mb
FROM (SELECT json_extract(value, '$.id') AS id, json_extract(value, '$.attempt') AS attempt,
             json_extract(value, '$.pid') AS pid,
             json_extract(value, '$.start_unwritten') AS start_unwritten,
             json_extract(value, '$.outcome') AS outcome,
             json_extract(value, '$.result') AS result,
             json_extract(value, '$.error_type') AS error_type,
             json_extract(value, '$.error_message') AS error_message,
             json_extract(value, '$.traceback') AS traceback,
             json_extract(value, '$.duration') AS duration,
             json_extract(value, '$.memory_mb') AS memory_mb
      FROM json_each(:finishes)) AS f
JOIN errand_jobs j ON j.id = f.id AND j.attempt = f.attempt AND +j.worker_id = :worker
WHERE true  -- (SQLite needs a WHERE before ON CONFLICT in INSERT ... SELECT ... JOIN)
ON CONFLICT (job_id, attempt) DO NOTHING;

-- name: save_progress
UPDATE errand_jobs
SET progress = p.percent, status_message = p.message
FROM (SELECT json_extract(value, '$.id') AS id, json_extract(value, '$.attempt') AS attempt,
             json_extract(value, '$.percent') AS percent,
             json_extract(value, '$.message') AS message
      FROM json_each(:updates)) AS p
WHERE errand_jobs.id = p.id AND errand_jobs.attempt = p.attempt
  AND +errand_jobs.state IN ('enqueued', 'started');

-- name: next_eta
SELECT max(min(eta) - (julianday('now') - 2440587.5) * 86400.0, 0.0)
FROM errand_jobs INDEXED BY errand_jobs_pending_eta WHERE state = 'pending';

-- name: rescue_jobs
-- One writer at a time (BEGIN IMMEDIATE), so no election is needed here. A try still
-- 'enqueued' was claimed (ahead) but not seen starting: it does not count. The tries are
-- written before the jobs change.
INSERT INTO errand_attempts (job_id, attempt, worker_id, pid, started_at, ended_at, outcome,
                             error_type, error_message)
SELECT id, attempt, worker_id, pid, CASE WHEN state = 'started' THEN started_at END,
       (julianday('now') - 2440587.5) * 86400.0, 'interrupted', 'WorkerLost',
       'worker ' || coalesce(worker_id, '?') || ' stopped heartbeating'
FROM errand_jobs
WHERE state IN ('enqueued', 'started')
  AND worker_id NOT IN (SELECT id FROM errand_workers
                        WHERE state = 'running'
                          AND (heartbeat_at >= (julianday('now') - 2440587.5) * 86400.0 - :lease
                               OR id IN (SELECT value FROM json_each(:alive))));
UPDATE errand_jobs
SET state = CASE WHEN state = 'started' AND max_retries > 0 AND retries >= max_retries
                 THEN 'failed' ELSE 'pending' END,
    retries = CASE WHEN state = 'started' AND NOT (max_retries > 0 AND retries >= max_retries)
                   THEN retries + 1 ELSE retries END,
    eta = (julianday('now') - 2440587.5) * 86400.0,
    ended_at = CASE WHEN state = 'started' AND max_retries > 0 AND retries >= max_retries
                    THEN (julianday('now') - 2440587.5) * 86400.0 END,
    error_type = 'WorkerLost',
    error_message = 'worker ' || coalesce(worker_id, '?')
                    || ' stopped heartbeating during try ' || attempt
WHERE state IN ('enqueued', 'started')
  AND worker_id NOT IN (SELECT id FROM errand_workers
                        WHERE state = 'running'
                          AND (heartbeat_at >= (julianday('now') - 2440587.5) * 86400.0 - :lease
                               OR id IN (SELECT value FROM json_each(:alive))))
RETURNING id;
UPDATE errand_workers SET state = 'dead'
WHERE state = 'running'
  AND heartbeat_at < (julianday('now') - 2440587.5) * 86400.0 - :lease
  AND id NOT IN (SELECT value FROM json_each(:alive));
DELETE FROM errand_workers
WHERE state IN ('dead', 'stopped')
  AND heartbeat_at < (julianday('now') - 2440587.5) * 86400.0 - 86400.0;
