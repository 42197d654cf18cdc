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

-- Claims and ends made the statement trigger of version 1 copy every row they changed into
-- a transition table, to find none ready. A row trigger whose WHEN condition PostgreSQL
-- checks itself calls the function only for a job that is ready now; one transaction's
-- identical notifications still fold into one. Inserts keep the statement trigger: a bulk
-- insert notifies once, not once per job.
CREATE FUNCTION errand_notify_ready_job() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('errand_jobs', NEW.channel);
    RETURN NULL;
END
$$;
DROP TRIGGER errand_jobs_updated ON errand_jobs;
CREATE TRIGGER errand_jobs_ready_again AFTER UPDATE OF state, eta ON errand_jobs
    FOR EACH ROW WHEN (NEW.state = 'pending' AND NEW.eta <= now())
    EXECUTE FUNCTION errand_notify_ready_job();
