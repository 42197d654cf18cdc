-- errand schema, version 4: fewer writes per job.
--
-- A try's row is written once, when the try ends (or is interrupted), instead of inserted
-- at the claim and updated at the end. While a try runs, the job's own row describes it
-- (attempt, worker_id, started_at and now pid), and list_attempts shows it from there.
-- Stop the workers of older versions before this migration runs.
ALTER TABLE errand_jobs ADD COLUMN pid integer;

UPDATE errand_jobs AS j SET pid = a.pid
FROM errand_attempts a
WHERE a.job_id = j.id AND a.attempt = j.attempt AND a.outcome IS NULL
  AND j.state IN ('enqueued', 'started');
DELETE FROM errand_attempts AS a USING errand_jobs j
WHERE a.job_id = j.id AND a.attempt = j.attempt AND a.outcome IS NULL
  AND j.state IN ('enqueued', 'started');
UPDATE errand_attempts SET outcome = 'interrupted', ended_at = coalesce(ended_at, now())
WHERE outcome IS NULL;
DROP INDEX errand_attempts_open;

-- Every claim and end rewrote three more index entries than needed:
-- - running jobs by channel: capacities count the few running jobs through errand_jobs_running;
-- - pending jobs by eta: next_eta finds the earliest through errand_jobs_ready, one priority
--   at a time;
-- - jobs by state: only the states jobs rest in are listed through it. Pending jobs are read
--   through errand_jobs_ready, running ones through errand_jobs_running.
DROP INDEX errand_jobs_running_channel;
DROP INDEX errand_jobs_pending_eta;
DROP INDEX errand_jobs_state;
CREATE INDEX errand_jobs_state ON errand_jobs (state, id)
    WHERE state IN ('wait_dependencies', 'done', 'failed', 'cancelled');
