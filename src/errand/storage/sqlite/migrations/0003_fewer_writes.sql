-- errand schema, version 3: a try's row is written once, when the try ends (or is
-- interrupted), instead of inserted at the claim and updated at the end. While a try runs,
-- the job's own row describes it (attempt, worker_id, started_at and now pid), and
-- list_attempts shows it from there. Stop the workers of older versions before this
-- migration runs. (PostgreSQL's version 4 also drops three indexes; SQLite keeps them, its
-- queries name some of them.)
ALTER TABLE errand_jobs ADD COLUMN pid INTEGER;

UPDATE errand_jobs SET pid = (SELECT a.pid FROM errand_attempts a
                              WHERE a.job_id = errand_jobs.id
                                AND a.attempt = errand_jobs.attempt AND a.outcome IS NULL)
WHERE state IN ('enqueued', 'started');
DELETE FROM errand_attempts
WHERE outcome IS NULL
  AND EXISTS (SELECT 1 FROM errand_jobs j
              WHERE j.id = errand_attempts.job_id AND j.attempt = errand_attempts.attempt
                AND j.state IN ('enqueued', 'started'));
UPDATE errand_attempts
SET outcome = 'interrupted', ended_at = coalesce(ended_at, (julianday('now') - 2440587.5) * 86400.0)
WHERE outcome IS NULL;
DROP INDEX errand_attempts_open;
