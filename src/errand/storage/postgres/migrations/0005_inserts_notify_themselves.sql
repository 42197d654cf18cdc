-- errand schema, version 5: errand's inserts wake the workers themselves.
--
-- The statement trigger of version 1 copied every inserted row into a transition table and
-- queried it: a tenth of a one-job enqueue's time. errand's own insert statements now send
-- the notification as they store the jobs, and its sessions say so (errand.notifies_itself,
-- set in connection_setup). The trigger stays for every other writer (psql, another
-- language, a caller's connection), as a row trigger whose WHEN condition PostgreSQL checks
-- itself: for errand's own rows it costs that check, and no call.
DROP TRIGGER errand_jobs_inserted ON errand_jobs;
DROP FUNCTION errand_notify_ready();
CREATE TRIGGER errand_jobs_inserted AFTER INSERT ON errand_jobs
    FOR EACH ROW
    WHEN (current_setting('errand.notifies_itself', true) IS DISTINCT FROM 'on'
          AND NEW.state = 'pending' AND NEW.eta <= now())
    EXECUTE FUNCTION errand_notify_ready_job();
