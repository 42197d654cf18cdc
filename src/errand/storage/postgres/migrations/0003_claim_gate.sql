-- errand schema, version 3: a one-statement claim under channel capacities.

-- Takes the claim lock, then counts running jobs with a fresh snapshot (queries inside a
-- volatile function see what committed before the lock was granted) and tells whether
-- `wanted` more jobs fit under every capacity in `caps` ({"root.mail": 2, ...}).
CREATE FUNCTION errand_claim_gate(caps jsonb, wanted integer) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('errand'), 3);
    RETURN NOT EXISTS (
        SELECT 1 FROM jsonb_each_text(caps) AS cap(name, capacity)
        WHERE wanted + (SELECT count(*) FROM errand_jobs j
                        WHERE j.state IN ('enqueued', 'started')
                          AND (j.channel = cap.name
                               OR left(j.channel, length(cap.name) + 1) = cap.name || '.'))
              > cap.capacity::integer);
END
$$;
