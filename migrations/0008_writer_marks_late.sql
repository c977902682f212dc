-- 0008: the digest writer marks its own late samples; the points' late-sample triggers skip
-- its statements.
--
-- Since 0003 the triggers find a point's server by joining the statement's rows with
-- process_identities / process_groups: for a batch of late samples (a backlog, an agent's
-- spool) that join cost PostgreSQL ~2.4 µs per point, more than the COPY of the point itself
-- (docs/BENCHMARKS.md "Identities: the writer's CPU per row after issue 11"). The writer
-- knows each point's server: it sets procfleet.late_marked_by_writer for its batch's
-- transaction (SET LOCAL) and inserts the same (source, server_id, minute) rows itself, later
-- in that transaction (digest_worker/writer.py), with the same test against its own
-- statement_timestamp(), which is not earlier than the COPY's: it marks at least what the
-- trigger would have. Every other insert (the views' INSTEAD OF triggers, the writer's poison
-- isolation, partition upkeep, tools) is marked by the trigger as before.

CREATE OR REPLACE FUNCTION rollup_mark_late_groups() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('procfleet.late_marked_by_writer', true) = 'on' THEN
        RETURN NULL;
    END IF;
    INSERT INTO rollup_dirty (source, server_id, ts)
    SELECT DISTINCT 'groups', g.server_id, date_trunc('minute', n.ts)
    FROM new_rows n JOIN process_groups g ON g.key = n.key
    WHERE n.ts < statement_timestamp() - rollup_late_after();
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION rollup_mark_late_processes() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('procfleet.late_marked_by_writer', true) = 'on' THEN
        RETURN NULL;
    END IF;
    INSERT INTO rollup_dirty (source, server_id, ts)
    SELECT DISTINCT 'processes', i.server_id, date_trunc('minute', n.ts)
    FROM new_rows n JOIN process_identities i ON i.key = n.key
    WHERE n.ts < statement_timestamp() - rollup_late_after();
    RETURN NULL;
END
$$;
