-- Every statement errand sends to PostgreSQL. Blocks are named (`-- name: x`); the SQLite
-- file defines the same names. Batches arrive as one JSON document, unpacked with
-- jsonb_to_recordset, so one statement (one round trip) handles any number of jobs.

-- name: connection_setup
-- A lock held elsewhere (say, a long transaction touching errand_jobs) must surface as an
-- error the worker retries, not freeze its loop and its heartbeats.
SET lock_timeout = '10s';
-- The insert statements below wake the workers themselves (see migration 5).
SET errand.notifies_itself = 'on';

-- name: watch_changes
LISTEN errand_jobs;
LISTEN errand_control;

-- name: database_identity
SELECT current_database();

-- name: schema_table_exists
SELECT to_regclass('errand_schema_version') IS NOT NULL;

-- name: create_schema_table
CREATE TABLE IF NOT EXISTS errand_schema_version (
    version    integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: lock_schema
SELECT pg_advisory_xact_lock(hashtext('errand'), 1);

-- name: schema_version
SELECT coalesce(max(version), 0) FROM errand_schema_version;

-- name: record_version
INSERT INTO errand_schema_version (version) VALUES (%(version)s);

-- name: enqueue_jobs
-- A job whose identity key matches a job that has not run yet is skipped here (the
-- caller then reads that job with find_by_identity). So is a job whose uuid is stored
-- already: an insert retried on a new connection may have run before its first one broke
-- (the caller reads such a job by uuid). DO NOTHING without a target covers both.
-- Only what the database chose comes back; the rest of each row is what was sent. Each
-- ready job notifies its channel: PostgreSQL folds a transaction's identical
-- notifications into one.
WITH stored AS (
    INSERT INTO errand_jobs (uuid, task, description, state, channel, priority, eta, args,
                             kwargs, context, max_retries, retry_pattern, timeout,
                             identity_key)
    SELECT j.uuid, j.task, j.description,
           CASE WHEN j.waits THEN 'wait_dependencies' ELSE 'pending' END,
           j.channel, j.priority, coalesce(j.eta_at, now() + make_interval(secs => j.eta_in)),
           j.args, j.kwargs, j.context, j.max_retries, j.retry_pattern, j.timeout,
           j.identity_key
    FROM jsonb_to_recordset(%(jobs)s::jsonb) AS j(
        uuid uuid, task text, description text, channel text, priority integer,
        eta_at timestamptz, eta_in double precision, args jsonb, kwargs jsonb, context jsonb,
        max_retries integer, retry_pattern jsonb, timeout double precision,
        identity_key text, waits boolean)
    ON CONFLICT DO NOTHING
    RETURNING uuid, id, eta, created_at, channel, state)
SELECT stored.uuid, stored.id, stored.eta, stored.created_at
FROM stored LEFT JOIN LATERAL (SELECT pg_notify('errand_jobs', stored.channel)
                               WHERE stored.state = 'pending'
                                 AND stored.eta <= now()) AS woken ON true;

-- name: enqueue_job
-- One job without dependencies or identity key: enqueue_jobs without the JSON document (a
-- tenth cheaper) and without ON CONFLICT: its speculative insertion cost 2-4% of a one-job
-- enqueue. A uuid stored already (an insert retried after its first run went through)
-- raises unique_violation instead, and the caller reads that job. A ready job notifies
-- its channel.
WITH job AS (
    INSERT INTO errand_jobs (uuid, task, description, state, channel, priority, eta, args,
                             kwargs, context, max_retries, retry_pattern, timeout)
    VALUES (%(uuid)s, %(task)s, %(description)s, 'pending', %(channel)s, %(priority)s,
            coalesce(%(eta_at)s::timestamptz, now() + make_interval(secs => %(eta_in)s)),
            %(args)s::jsonb, %(kwargs)s::jsonb, %(context)s::jsonb, %(max_retries)s,
            %(retry_pattern)s::jsonb, %(timeout)s)
    RETURNING uuid, id, eta, created_at, channel)
SELECT job.uuid, job.id, job.eta, job.created_at
FROM job LEFT JOIN LATERAL (SELECT pg_notify('errand_jobs', job.channel)
                            WHERE job.eta <= now()) AS woken ON true;

-- name: reserve_jobs
-- What COPY cannot compute for the jobs it stores: their ids (from the jobs' own
-- sequence), the etas of the given delays (in order, as enqueue_jobs computes them) and
-- the creation time.
SELECT array(SELECT nextval('errand_jobs_id_seq') FROM generate_series(1, %(count)s)),
       array(SELECT now() + make_interval(secs => d.delay)
             FROM unnest(%(delays)s::double precision[]) WITH ORDINALITY AS d(delay, n)
             ORDER BY d.n),
       now();

-- name: copy_jobs
-- Jobs without identity keys or dependencies, as lines of text (rows.copy_lines).
COPY errand_jobs (id, uuid, task, description, state, channel, priority, eta, args, kwargs,
                  context, max_retries, retry_pattern, timeout, created_at) FROM STDIN;

-- name: notify_ready
-- After copy_jobs, in its transaction: the channels of the jobs it stored (each with their
-- etas) wake the workers if a job is ready now. PostgreSQL folds identical notifications.
SELECT pg_notify('errand_jobs', c.channel)
FROM unnest(%(channels)s::text[], %(etas)s::timestamptz[]) AS c(channel, eta)
WHERE c.eta <= now();

-- name: add_dependencies
INSERT INTO errand_dependencies (job_id, depends_on)
SELECT child.id, parent.id
FROM jsonb_to_recordset(%(dependencies)s::jsonb) AS d(job uuid, parent uuid)
JOIN errand_jobs child ON child.uuid = d.job
JOIN errand_jobs parent ON parent.uuid = d.parent;

-- name: find_by_identity
SELECT id, uuid, task, description, state, channel, priority, eta, args::text, kwargs::text,
       context::text, max_retries, retries, retry_pattern::text, timeout, attempt,
       result::text, error_type, error_message, progress, status_message, worker_id,
       created_at, started_at, ended_at, identity_key
FROM errand_jobs
WHERE id IN (SELECT max(id) FROM errand_jobs
             WHERE identity_key = ANY(%(keys)s::text[]) GROUP BY identity_key);

-- name: get_job
SELECT id, uuid, task, description, state, channel, priority, eta, args::text, kwargs::text,
       context::text, max_retries, retries, retry_pattern::text, timeout, attempt,
       result::text, error_type, error_message, progress, status_message, worker_id,
       created_at, started_at, ended_at, identity_key
FROM errand_jobs WHERE uuid = %(uuid)s;

-- name: list_jobs
SELECT id, uuid, task, description, state, channel, priority, eta, args::text, kwargs::text,
       context::text, max_retries, retries, retry_pattern::text, timeout, attempt,
       result::text, error_type, error_message, progress, status_message, worker_id,
       created_at, started_at, ended_at, identity_key
FROM errand_jobs
WHERE (%(state)s::text IS NULL OR state = %(state)s::text)
  AND (%(channel)s::text IS NULL OR channel = %(channel)s::text
       OR left(channel, length(%(channel)s::text) + 1) = %(channel)s::text || '.')
  AND (%(task)s::text IS NULL OR task = %(task)s::text)
ORDER BY id DESC
LIMIT %(limit)s;

-- name: list_attempts
-- Ended tries have their row; a running try is read from the job's row.
SELECT job_id, attempt, worker_id, pid, started_at, ended_at, duration, outcome, result::text,
       error_type, error_message, traceback, memory_mb
FROM errand_attempts WHERE job_id = %(job_id)s
UNION ALL
SELECT id, attempt, worker_id, pid, CASE WHEN state = 'started' THEN started_at END, NULL,
       NULL, NULL, NULL, NULL, NULL, NULL, NULL
FROM errand_jobs WHERE id = %(job_id)s AND state IN ('enqueued', 'started')
ORDER BY attempt;

-- name: uuids_in_state
SELECT uuid FROM errand_jobs WHERE state = %(state)s ORDER BY id;

-- name: cancel_jobs
-- Cancelling a job cancels every job that depends on it, transitively.
WITH RECURSIVE targets AS (
    SELECT id FROM errand_jobs
    WHERE uuid = ANY(%(uuids)s::uuid[]) AND state = ANY(%(from_states)s::text[])
    UNION
    SELECT d.job_id FROM errand_dependencies d JOIN targets t ON d.depends_on = t.id
), cancelled AS (
    UPDATE errand_jobs
    SET state = 'cancelled', ended_at = now()
    WHERE id IN (SELECT id FROM targets) AND state = ANY(%(from_states)s::text[])
    RETURNING uuid
)
SELECT uuid, pg_notify('errand_control', 'cancel') FROM cancelled;

-- name: requeue_jobs
UPDATE errand_jobs
SET state = 'pending', eta = least(eta, now()), retries = 0, result = NULL, error_type = NULL,
    error_message = NULL, progress = 0, status_message = NULL, ended_at = NULL
WHERE uuid = ANY(%(uuids)s::uuid[]) AND state = ANY(%(from_states)s::text[])
RETURNING uuid;

-- name: set_jobs_done
UPDATE errand_jobs
SET state = 'done', result = %(result)s::jsonb, error_type = NULL, error_message = NULL,
    progress = 100, ended_at = now()
WHERE uuid = ANY(%(uuids)s::uuid[]) AND state = ANY(%(from_states)s::text[])
RETURNING uuid, id;

-- name: purge_jobs
DELETE FROM errand_jobs
WHERE id IN (SELECT id FROM errand_jobs
             WHERE state = ANY(%(states)s::text[])
               AND ended_at < now() - make_interval(secs => %(older_than)s)
             LIMIT %(limit)s);

-- name: channel_counts
-- Each state through its own partial index, never the history: pending jobs through
-- errand_jobs_ready, running ones through errand_jobs_running, waiting ones through
-- errand_jobs_state.
SELECT channel, state, count(*)
FROM (SELECT channel, state FROM errand_jobs WHERE state = 'pending'
      UNION ALL
      SELECT channel, state FROM errand_jobs WHERE state IN ('enqueued', 'started')
      UNION ALL
      SELECT channel, state FROM errand_jobs WHERE state = 'wait_dependencies') AS active
GROUP BY channel, state
ORDER BY channel, state;

-- name: stats
SELECT task, state, count(*),
       avg(extract(epoch FROM ended_at - started_at))::double precision,
       max(extract(epoch FROM ended_at - started_at))::double precision
FROM errand_jobs
WHERE created_at >= now() - make_interval(secs => %(seconds)s)
GROUP BY task, state
ORDER BY task, state;

-- name: list_workers
SELECT w.id, w.host, w.pid, w.started_at, w.heartbeat_at,
       extract(epoch FROM now() - w.heartbeat_at)::double precision,
       w.concurrency, w.state, w.jobs_done,
       (SELECT count(*) FROM errand_jobs j
        WHERE j.worker_id = w.id AND j.state IN ('enqueued', 'started'))
FROM errand_workers w
ORDER BY w.started_at DESC;

-- name: register_worker
INSERT INTO errand_workers (id, host, pid, concurrency, channels, version, state)
VALUES (%(id)s, %(host)s, %(pid)s, %(concurrency)s, %(channels)s, %(version)s, 'running')
ON CONFLICT (id) DO UPDATE SET state = 'running', heartbeat_at = now();

-- name: touch_worker
UPDATE errand_workers SET heartbeat_at = now(), state = 'running'
WHERE id = %(worker)s
RETURNING id;

-- name: lost_jobs
SELECT r.id
FROM jsonb_to_recordset(%(running)s::jsonb) AS r(id bigint, attempt integer)
LEFT JOIN errand_jobs j
       ON j.id = r.id AND j.attempt = r.attempt AND j.worker_id = %(worker)s
      AND j.state IN ('enqueued', 'started')
WHERE j.id IS NULL;

-- name: release_unknown
-- Jobs held for this worker that it does not run (a claim whose answer was lost with the
-- connection): pending again, their try closed as interrupted, not counted as a retry.
WITH known AS (
    SELECT * FROM jsonb_to_recordset(%(running)s::jsonb) AS r(id bigint, attempt integer)
), unknown AS MATERIALIZED (
    SELECT j.id, j.attempt, j.pid, CASE WHEN j.state = 'started' THEN j.started_at END
                                        AS started_at
    FROM errand_jobs j
    WHERE j.worker_id = %(worker)s AND j.state IN ('enqueued', 'started')
      AND NOT EXISTS (SELECT 1 FROM known k WHERE k.id = j.id AND k.attempt = j.attempt)
    FOR UPDATE
), released AS (
    UPDATE errand_jobs AS j SET state = 'pending', eta = least(j.eta, now())
    FROM unknown u WHERE j.id = u.id
    RETURNING j.id
), closed AS (
    INSERT INTO errand_attempts (job_id, attempt, worker_id, pid, started_at, ended_at,
                                 outcome, error_type, error_message)
    SELECT u.id, u.attempt, %(worker)s, u.pid, u.started_at, now(), 'interrupted', 'ClaimLost',
           'the claim reached the database but its answer never reached the worker'
    FROM unknown u
)
SELECT id FROM released;

-- name: unclaim_jobs
-- Jobs a stopping worker claimed ahead and never started: pending again, as if never
-- claimed (their try number is taken back; a try has no row before it ends).
UPDATE errand_jobs AS j SET state = 'pending', attempt = j.attempt - 1, worker_id = NULL
FROM jsonb_to_recordset(%(jobs)s::jsonb) AS r(id bigint, attempt integer)
WHERE j.id = r.id AND j.attempt = r.attempt AND j.worker_id = %(worker)s
  AND j.state = 'enqueued'
RETURNING j.id;

-- name: stop_worker
UPDATE errand_workers SET state = 'stopped', heartbeat_at = now() WHERE id = %(worker)s;

-- name: claim_jobs
WITH picked AS MATERIALIZED (
    SELECT id FROM errand_jobs
    WHERE state = 'pending' AND eta <= now()
    ORDER BY priority, eta, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE errand_jobs AS j
    SET state = 'enqueued', attempt = j.attempt + 1, worker_id = %(worker)s, pid = NULL,
        enqueued_at = now(), progress = 0, status_message = NULL
    FROM picked WHERE j.id = picked.id
    RETURNING j.id, j.uuid, j.task, j.args::text AS args, j.kwargs::text AS kwargs,
              j.context::text AS context, j.attempt, j.retries, j.max_retries,
              j.retry_pattern::text AS retry_pattern, j.timeout, j.channel, j.priority, j.eta
)
SELECT id, uuid, task, args, kwargs, context, attempt, retries, max_retries, retry_pattern,
       timeout, channel,
       EXISTS (SELECT 1 FROM errand_dependencies d WHERE d.job_id = claimed.id),
       EXISTS (SELECT 1 FROM errand_dependencies d WHERE d.depends_on = claimed.id)
FROM claimed
ORDER BY priority, eta, id;

-- name: claim_gated
-- One round trip when capacities cannot bind: if the gate is closed, nothing is claimed
-- and a last row of NULLs says so (the caller then takes the careful path).
WITH gate AS MATERIALIZED (
    SELECT errand_claim_gate(%(caps)s::jsonb, %(limit)s) AS open
), picked AS MATERIALIZED (
    SELECT id FROM errand_jobs
    WHERE (SELECT open FROM gate) AND state = 'pending' AND eta <= now()
    ORDER BY priority, eta, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE errand_jobs AS j
    SET state = 'enqueued', attempt = j.attempt + 1, worker_id = %(worker)s, pid = NULL,
        enqueued_at = now(), progress = 0, status_message = NULL
    FROM picked WHERE j.id = picked.id
    RETURNING j.id, j.uuid, j.task, j.args::text AS args, j.kwargs::text AS kwargs,
              j.context::text AS context, j.attempt, j.retries, j.max_retries,
              j.retry_pattern::text AS retry_pattern, j.timeout, j.channel, j.priority, j.eta
)
SELECT id, uuid, task, args, kwargs, context, attempt, retries, max_retries, retry_pattern,
       timeout, channel,
       EXISTS (SELECT 1 FROM errand_dependencies d WHERE d.job_id = claimed.id),
       EXISTS (SELECT 1 FROM errand_dependencies d WHERE d.depends_on = claimed.id)
FROM claimed
UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
WHERE NOT (SELECT open FROM gate);

-- name: lock_claims
-- With channel capacities, claims take turns, so every worker counts the same running jobs.
SELECT pg_advisory_xact_lock(hashtext('errand'), 3);

-- name: running_by_channel
SELECT channel, count(*) FROM errand_jobs
WHERE state IN ('enqueued', 'started')
GROUP BY channel;

-- name: stuck_channels
-- Sequential channels holding a failed job, or a job waiting to be retried: they wait.
-- Each half reads its own partial index, never the whole history.
SELECT s.name FROM unnest(%(sequential)s::text[]) AS s(name)
WHERE EXISTS (SELECT 1 FROM errand_jobs j
              WHERE j.state = 'failed'
                AND (j.channel = s.name
                     OR left(j.channel, length(s.name) + 1) = s.name || '.'))
   OR EXISTS (SELECT 1 FROM errand_jobs j
              WHERE j.state = 'pending' AND j.eta > now() AND j.attempt > 0
                AND (j.channel = s.name
                     OR left(j.channel, length(s.name) + 1) = s.name || '.'));

-- name: ready_jobs
SELECT id, channel, priority, eta FROM errand_jobs
WHERE state = 'pending' AND eta <= now()
  AND NOT EXISTS (SELECT 1 FROM unnest(%(blocked)s::text[]) AS b(name)
                  WHERE channel = b.name OR left(channel, length(b.name) + 1) = b.name || '.')
ORDER BY priority, eta, id
LIMIT %(limit)s;

-- name: sequential_heads
-- The next job of each sequential channel: a job already tried (retried or requeued)
-- finishes its turn before the channel moves on, then priority, eta, creation.
SELECT head.id, s.name, head.priority, head.eta
FROM unnest(%(names)s::text[]) AS s(name)
CROSS JOIN LATERAL (
    SELECT id, priority, eta FROM errand_jobs
    WHERE state = 'pending' AND eta <= now()
      AND (channel = s.name OR left(channel, length(s.name) + 1) = s.name || '.')
    ORDER BY attempt > 0 DESC, priority, eta, id
    LIMIT 1) AS head;

-- name: claim_chosen
WITH claimed AS (
    UPDATE errand_jobs AS j
    SET state = 'enqueued', attempt = j.attempt + 1, worker_id = %(worker)s, pid = NULL,
        enqueued_at = now(), progress = 0, status_message = NULL
    WHERE j.id = ANY(%(ids)s::bigint[]) AND j.state = 'pending'
    RETURNING j.id, j.uuid, j.task, j.args::text AS args, j.kwargs::text AS kwargs,
              j.context::text AS context, j.attempt, j.retries, j.max_retries,
              j.retry_pattern::text AS retry_pattern, j.timeout, j.channel, j.priority, j.eta
)
SELECT id, uuid, task, args, kwargs, context, attempt, retries, max_retries, retry_pattern,
       timeout, channel,
       EXISTS (SELECT 1 FROM errand_dependencies d WHERE d.job_id = claimed.id),
       EXISTS (SELECT 1 FROM errand_dependencies d WHERE d.depends_on = claimed.id)
FROM claimed
ORDER BY priority, eta, id;

-- name: parent_results
SELECT d.job_id, parent.uuid, parent.result::text
FROM errand_dependencies d JOIN errand_jobs parent ON parent.id = d.depends_on
WHERE d.job_id = ANY(%(ids)s::bigint[]);

-- name: channel_settings
SELECT name, capacity, sequential, paused FROM errand_channels ORDER BY name;

-- name: save_channel
WITH saved AS (
    INSERT INTO errand_channels (name, capacity, sequential)
    VALUES (%(name)s, %(capacity)s, %(sequential)s)
    ON CONFLICT (name) DO UPDATE
    SET capacity = excluded.capacity, sequential = excluded.sequential, updated_at = now()
    RETURNING name
)
SELECT name, pg_notify('errand_control', 'channels') FROM saved;

-- name: pause_channel
WITH saved AS (
    INSERT INTO errand_channels (name, paused) VALUES (%(name)s, %(paused)s)
    ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, updated_at = now()
    RETURNING name
)
SELECT name, pg_notify('errand_control', 'channels') FROM saved;

-- name: mark_started
UPDATE errand_jobs AS j SET state = 'started', started_at = now(), pid = s.pid
FROM jsonb_to_recordset(%(started)s::jsonb) AS s(id bigint, attempt integer, pid integer)
WHERE j.id = s.id AND j.attempt = s.attempt AND j.worker_id = %(worker)s
  AND j.state = 'enqueued';

-- name: finish_jobs
WITH f AS MATERIALIZED (
    SELECT * FROM jsonb_to_recordset(%(finishes)s::jsonb) AS f(
        id bigint, attempt integer, state text, outcome text, retries integer,
        delay double precision, result jsonb, error_type text, error_message text,
        traceback text, duration double precision, memory_mb double precision, pid integer,
        start_unwritten boolean)
), jobs AS (
    -- A try too short for its start to be written on its own: its start is written now,
    -- dated back by its duration.
    UPDATE errand_jobs AS j
    SET state = f.state,
        retries = f.retries,
        eta = CASE WHEN f.state = 'pending' THEN now() + make_interval(secs => f.delay)
                   ELSE j.eta END,
        result = CASE WHEN f.state = 'done' THEN f.result END,
        error_type = CASE WHEN f.state = 'done' THEN NULL ELSE f.error_type END,
        error_message = CASE WHEN f.state = 'done' THEN NULL ELSE f.error_message END,
        progress = CASE WHEN f.state = 'done' THEN 100 ELSE j.progress END,
        started_at = CASE WHEN f.start_unwritten
                          THEN now() - make_interval(secs => coalesce(f.duration, 0))
                          ELSE j.started_at END,
        pid = f.pid,
        ended_at = CASE WHEN f.state IN ('done', 'failed', 'cancelled') THEN now() END
    FROM f
    WHERE j.id = f.id AND j.attempt = f.attempt AND j.worker_id = %(worker)s
      AND j.state IN ('enqueued', 'started')
    RETURNING j.id, j.state
), tries AS (
    -- The try's row, written once: for each job ended above, and for a job cancelled while
    -- its try ran (its row is left alone). The scalar subqueries read a job's row as it
    -- was before this statement, by id (a join could scan every job of the worker). If the rescue wrote the row first (this worker
    -- was taken for dead), the rescue's row stays.
    INSERT INTO errand_attempts (job_id, attempt, worker_id, pid, started_at, ended_at,
                                 duration, outcome, result, error_type, error_message,
                                 traceback, memory_mb)
    SELECT f.id, f.attempt, %(worker)s, f.pid,
           CASE WHEN f.start_unwritten
                THEN now() - make_interval(secs => coalesce(f.duration, 0))
                ELSE (SELECT j.started_at FROM errand_jobs j WHERE j.id = f.id) END,
           now(), f.duration, f.outcome, f.result, f.error_type, f.error_message, f.traceback,
           f.memory_mb
    FROM f
    WHERE f.id IN (SELECT id FROM jobs)
       OR (SELECT j.state FROM errand_jobs j
           WHERE j.id = f.id AND j.attempt = f.attempt AND j.worker_id = %(worker)s)
          = 'cancelled'
    ON CONFLICT (job_id, attempt) DO NOTHING
), counted AS (
    UPDATE errand_workers SET jobs_done = jobs_done + (SELECT count(*) FROM jobs)
    WHERE id = %(worker)s
)
SELECT id, state = 'done' AND EXISTS (SELECT 1 FROM errand_dependencies d
                                      WHERE d.depends_on = jobs.id)
FROM jobs;

-- name: release_children
-- Children of the given jobs whose parents are now all done become pending. Locking the
-- children first makes two transactions finishing a child's last parents take turns, so
-- the second one (with a fresh snapshot) sees both parents done.
SELECT id FROM errand_jobs
WHERE state = 'wait_dependencies'
  AND id IN (SELECT job_id FROM errand_dependencies WHERE depends_on = ANY(%(ids)s::bigint[]))
ORDER BY id
FOR UPDATE;
UPDATE errand_jobs AS child SET state = 'pending'
WHERE child.state = 'wait_dependencies'
  AND child.id IN (SELECT job_id FROM errand_dependencies
                   WHERE depends_on = ANY(%(ids)s::bigint[]))
  AND NOT EXISTS (SELECT 1 FROM errand_dependencies d
                  JOIN errand_jobs parent ON parent.id = d.depends_on
                  WHERE d.job_id = child.id AND parent.state <> 'done');

-- name: save_progress
UPDATE errand_jobs AS j SET progress = p.percent, status_message = p.message
FROM jsonb_to_recordset(%(updates)s::jsonb) AS p(id bigint, attempt integer, percent integer,
                                                 message text)
WHERE j.id = p.id AND j.attempt = p.attempt AND j.state IN ('enqueued', 'started');

-- name: next_eta
-- The earliest eta of a pending job: the head of each priority in errand_jobs_ready, found
-- one priority after the other (a few index probes, however many jobs wait).
WITH RECURSIVE heads AS (
    (SELECT priority, eta FROM errand_jobs WHERE state = 'pending'
     ORDER BY priority, eta, id LIMIT 1)
    UNION ALL
    SELECT after.priority, after.eta
    FROM heads CROSS JOIN LATERAL (
        SELECT priority, eta FROM errand_jobs
        WHERE state = 'pending' AND priority > heads.priority
        ORDER BY priority, eta, id LIMIT 1) AS after
)
SELECT extract(epoch FROM min(eta) - now())::double precision FROM heads;

-- name: rescue_jobs
WITH elected AS MATERIALIZED (
    SELECT pg_try_advisory_xact_lock(hashtext('errand'), 2) AS won
), live AS MATERIALIZED (
    SELECT id FROM errand_workers
    WHERE state = 'running'
      AND (heartbeat_at >= now() - make_interval(secs => %(lease)s)
           OR id = ANY(%(alive)s::text[]))
), orphans AS MATERIALIZED (
    -- A try still 'enqueued' was claimed (ahead) but not seen starting: it does not count.
    SELECT j.id, j.attempt, j.worker_id, j.pid, j.state = 'started' AS counted,
           CASE WHEN j.state = 'started' THEN j.started_at END AS started_at,
           j.state = 'started' AND j.max_retries > 0 AND j.retries >= j.max_retries
               AS exhausted
    FROM errand_jobs j
    WHERE j.state IN ('enqueued', 'started') AND (SELECT won FROM elected)
      AND j.worker_id NOT IN (SELECT id FROM live)
    FOR UPDATE OF j SKIP LOCKED
), rescued AS (
    UPDATE errand_jobs AS j
    SET state = CASE WHEN o.exhausted THEN 'failed' ELSE 'pending' END,
        retries = CASE WHEN o.counted AND NOT o.exhausted THEN j.retries + 1
                       ELSE j.retries END,
        eta = now(),
        ended_at = CASE WHEN o.exhausted THEN now() END,
        error_type = 'WorkerLost',
        error_message = 'worker ' || coalesce(o.worker_id, '?')
                        || ' stopped heartbeating during try ' || o.attempt
    FROM orphans o WHERE j.id = o.id
    RETURNING j.id
), closed AS (
    INSERT INTO errand_attempts (job_id, attempt, worker_id, pid, started_at, ended_at,
                                 outcome, error_type, error_message)
    SELECT o.id, o.attempt, o.worker_id, o.pid, o.started_at, now(), 'interrupted',
           'WorkerLost', 'worker ' || coalesce(o.worker_id, '?') || ' stopped heartbeating'
    FROM orphans o
), buried AS (
    UPDATE errand_workers SET state = 'dead'
    WHERE state = 'running' AND id NOT IN (SELECT id FROM live) AND (SELECT won FROM elected)
), forgotten AS (
    DELETE FROM errand_workers
    WHERE state IN ('dead', 'stopped') AND heartbeat_at < now() - interval '1 day'
      AND (SELECT won FROM elected)
)
SELECT id FROM rescued;
