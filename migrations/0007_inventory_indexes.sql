-- 0007: the fleet process inventory made fast (issue 11 item 6), and the writer's last_seen
-- updates made HOT.
--
-- 1. HOT last_seen. 0003 says the once-a-minute last_seen updates of process_identities /
--    process_groups are HOT thanks to fillfactor 80. They were not: an update is HOT only if
--    it changes no indexed column, and last_seen was indexed (process_*_server (server_id,
--    last_seen)), so every refresh wrote a new entry into both indexes (and would have
--    written ~90 trigram entries into a GIN index on the command line as well). Now no index
--    holds last_seen: a stored generated column last_seen_hour (last_seen rounded down to
--    the hour) is indexed instead. It changes once an hour per live process, so 59 of 60
--    refreshes are HOT. (Not NOT NULL: the writer's staging tables are LIKE these tables and
--    stage no value for it.) Readers that filter "the server's identities live since X" add
--    "last_seen_hour >= date_bin('1 hour', X, …)" (the index range) to "last_seen >= X".
-- 2. Search: a common term is answered by walking last_seen_hour downwards (an index on it)
--    until the limit is filled (ingest_gateway/query/inventory.py). A rare one goes through
--    process_texts, every distinct name and command line once (a fleet runs the same
--    software on many hosts, again and again), with a trigram GIN index (pg_trgm, a trusted
--    extension); its matches lead to the identities by hash (expression indexes on
--    hashtextextended(name / command, 0)). A GIN index on the identities themselves cost
--    every new process ~14 µs of the writer's time (~90 trigram entries of its command
--    line); a btree entry of a hash costs ~2 µs, and the trigrams are paid once per text. A
--    1–2 character term has no trigram: it scans process_texts, not the identities.
-- 3. New: process_names, one row per (server_id, name) with the earliest first_seen of its
--    identities and that identity's command. Triggers on process_identities keep it: after
--    an INSERT statement (the writer's upsert, the views' insert trigger, tools) from its
--    new rows, set-based; after an UPDATE that moves first_seen earlier (a late or replayed
--    sample) or renames a process (exec), from that row. A refresh of last_seen costs the
--    trigger's WHEN test only. process_names_forget(p_before) re-derives or deletes the rows
--    that retention may have orphaned.

CREATE EXTENSION IF NOT EXISTS pg_trgm;

ALTER TABLE process_identities
    ADD COLUMN last_seen_hour timestamptz
    GENERATED ALWAYS AS (date_bin('1 hour', last_seen, TIMESTAMPTZ '2000-01-01 00:00:00+00'))
    STORED;
ALTER TABLE process_groups
    ADD COLUMN last_seen_hour timestamptz
    GENERATED ALWAYS AS (date_bin('1 hour', last_seen, TIMESTAMPTZ '2000-01-01 00:00:00+00'))
    STORED;

DROP INDEX process_identities_server;
DROP INDEX process_groups_server;
-- "the processes of one server in a window": snapshots, process_points_between's filter
CREATE INDEX process_identities_server ON process_identities (server_id, last_seen_hour);
CREATE INDEX process_groups_server ON process_groups (server_id, last_seen_hour);
-- search, all servers, newest first
CREATE INDEX process_identities_hour ON process_identities (last_seen_hour);
-- search, rare terms: from a matching text to its identities
CREATE INDEX process_identities_name_hash ON process_identities (hashtextextended(name, 0));
CREATE INDEX process_identities_command_hash ON process_identities
    (hashtextextended(command, 0));

-- No unique key: two writers may add the same new text at once (a duplicate is harmless),
-- and two texts may share a hash (both are kept).
CREATE TABLE process_texts (
    hash bigint NOT NULL,  -- hashtextextended(text, 0)
    text text   NOT NULL
);

-- Backfilled before its indexes are built: one sorted build each, not row by row.
INSERT INTO process_texts (hash, text)
SELECT hashtextextended(t, 0), t
FROM (SELECT name AS t FROM process_identities UNION SELECT command FROM process_identities) x;
CREATE INDEX process_texts_hash ON process_texts (hash);
CREATE INDEX process_texts_trgm ON process_texts USING gin (text gin_trgm_ops);

CREATE TABLE process_names (
    server_id  text        NOT NULL,
    name       text        NOT NULL,
    first_seen timestamptz NOT NULL,
    command    text        NOT NULL DEFAULT '',
    PRIMARY KEY (server_id, name)
);
CREATE INDEX process_names_first_seen ON process_names (first_seen);

INSERT INTO process_names (server_id, name, first_seen, command)
SELECT DISTINCT ON (server_id, name) server_id, name, first_seen, command
FROM process_identities
ORDER BY server_id, name, first_seen, pid;

-- The NOT EXISTS skips the (server, name) pairs already known at least as early without
-- taking their row lock; ORDER BY: the lock order of concurrent writers.
CREATE FUNCTION process_names_note_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO process_names AS n (server_id, name, first_seen, command)
    SELECT DISTINCT ON (r.server_id, r.name) r.server_id, r.name, r.first_seen, r.command
    FROM inserted r
    WHERE NOT EXISTS (SELECT 1 FROM process_names o
                      WHERE o.server_id = r.server_id AND o.name = r.name
                        AND o.first_seen <= r.first_seen)
    ORDER BY r.server_id, r.name, r.first_seen, r.pid
    ON CONFLICT (server_id, name) DO UPDATE
        SET first_seen = EXCLUDED.first_seen, command = EXCLUDED.command
        WHERE EXCLUDED.first_seen < n.first_seen;
    INSERT INTO process_texts (hash, text)
    SELECT hashtextextended(x.t, 0), x.t
    FROM (SELECT r.name AS t FROM inserted r UNION SELECT r.command FROM inserted r) x
    WHERE NOT EXISTS (SELECT 1 FROM process_texts o
                      WHERE o.hash = hashtextextended(x.t, 0) AND o.text = x.t);
    RETURN NULL;
END
$$;

CREATE FUNCTION process_names_note_updated() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO process_names AS n (server_id, name, first_seen, command)
    VALUES (NEW.server_id, NEW.name, NEW.first_seen, NEW.command)
    ON CONFLICT (server_id, name) DO UPDATE
        SET first_seen = EXCLUDED.first_seen, command = EXCLUDED.command
        WHERE EXCLUDED.first_seen < n.first_seen;
    INSERT INTO process_texts (hash, text)
    SELECT hashtextextended(x.t, 0), x.t
    FROM (VALUES (NEW.name), (NEW.command)) x(t)
    WHERE NOT EXISTS (SELECT 1 FROM process_texts o
                      WHERE o.hash = hashtextextended(x.t, 0) AND o.text = x.t);
    RETURN NULL;
END
$$;

CREATE TRIGGER process_names_inserted AFTER INSERT ON process_identities
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION process_names_note_inserted();
CREATE TRIGGER process_names_updated AFTER UPDATE ON process_identities
    FOR EACH ROW
    WHEN (NEW.first_seen < OLD.first_seen OR NEW.name IS DISTINCT FROM OLD.name
          OR NEW.command IS DISTINCT FROM OLD.command)
    EXECUTE FUNCTION process_names_note_updated();

-- For storage retention, after it deleted identities last seen before p_before: a row whose
-- earliest identity is gone gets the earliest one left (its first_seen and command), a row
-- with none left is deleted, so a name that comes back after its whole history expired is
-- new again ("not seen on that server in the retained history"). Only rows first seen before
-- p_before can have lost an identity. One pass over the identities (hash joins): an index on
-- (server_id, name) would make it cheaper but costs every new identity ~5 µs of the
-- writer's time and ~70 B (docs/BENCHMARKS.md). Returns the rows changed + deleted.
CREATE FUNCTION process_names_forget(p_before timestamptz)
RETURNS bigint
LANGUAGE sql AS $$
    WITH earliest AS (
        SELECT DISTINCT ON (i.server_id, i.name) i.server_id, i.name, i.first_seen, i.command
        FROM process_identities i
        JOIN process_names o ON o.server_id = i.server_id AND o.name = i.name
        WHERE o.first_seen < p_before
        ORDER BY i.server_id, i.name, i.first_seen, i.pid
    ), moved AS (
        UPDATE process_names n SET first_seen = e.first_seen, command = e.command
        FROM earliest e
        WHERE n.server_id = e.server_id AND n.name = e.name AND n.first_seen < e.first_seen
        RETURNING 1
    ), gone AS (
        DELETE FROM process_names n
        WHERE n.first_seen < p_before
          AND NOT EXISTS (SELECT 1 FROM earliest e
                          WHERE e.server_id = n.server_id AND e.name = n.name)
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM moved) + (SELECT count(*) FROM gone)
$$;

-- For storage retention too: the texts no identity has any more. The lock makes a writer
-- that is adding an identity with such a text wait, then see it gone and add it again (its
-- trigger's statement takes its snapshot after its lock). Returns the texts deleted.
CREATE FUNCTION process_texts_forget()
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    deleted bigint;
BEGIN
    LOCK TABLE process_texts IN SHARE ROW EXCLUSIVE MODE;
    DELETE FROM process_texts t
    WHERE NOT EXISTS (SELECT 1 FROM process_identities i
                      WHERE hashtextextended(i.name, 0) = t.hash AND i.name = t.text)
      AND NOT EXISTS (SELECT 1 FROM process_identities i
                      WHERE hashtextextended(i.command, 0) = t.hash AND i.command = t.text);
    GET DIAGNOSTICS deleted = ROW_COUNT;
    RETURN deleted;
END
$$;

-- 0004's / 0005's functions with the server filter on the index range (last_seen_hour) as
-- well as on last_seen; otherwise unchanged.
CREATE OR REPLACE FUNCTION process_points_between(p_from timestamptz, p_to timestamptz,
        p_server_ids text[] DEFAULT NULL)
RETURNS SETOF process_points
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT * FROM process_points WHERE ts >= p_from AND ts < p_to
      AND (p_server_ids IS NULL OR key IN (
          SELECT i.key FROM process_identities i
          WHERE i.server_id = ANY (p_server_ids)
            AND i.last_seen_hour >= date_bin('1 hour', p_from - interval '15 minutes',
                                             TIMESTAMPTZ '2000-01-01 00:00:00+00')
            AND i.last_seen >= p_from - interval '15 minutes'))
    UNION ALL
    SELECT h.* FROM process_history_points(p_from, p_to, p_server_ids) h
    WHERE h.ts >= p_from AND h.ts < p_to
      AND NOT EXISTS (SELECT 1 FROM process_points p
                      WHERE p.key = h.key AND p.ts = h.ts AND p.ts >= p_from AND p.ts < p_to)
$$;

CREATE OR REPLACE FUNCTION process_group_points_between(p_from timestamptz, p_to timestamptz,
        p_server_ids text[] DEFAULT NULL)
RETURNS SETOF process_group_points
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT * FROM process_group_points WHERE ts >= p_from AND ts < p_to
      AND (p_server_ids IS NULL OR key IN (
          SELECT g.key FROM process_groups g
          WHERE g.server_id = ANY (p_server_ids)
            AND g.last_seen_hour >= date_bin('1 hour', p_from - interval '15 minutes',
                                             TIMESTAMPTZ '2000-01-01 00:00:00+00')
            AND g.last_seen >= p_from - interval '15 minutes'))
    UNION ALL
    SELECT h.* FROM process_group_history_points(p_from, p_to, p_server_ids) h
    WHERE h.ts >= p_from AND h.ts < p_to
      AND NOT EXISTS (SELECT 1 FROM process_group_points p
                      WHERE p.key = h.key AND p.ts = h.ts AND p.ts >= p_from AND p.ts < p_to)
$$;
