-- 0003: process identity stored once; samples carry a compact key and only what moves.
--
-- Before: every process sample repeated server_id (32 chars on a real fleet), name, the full
-- command line, user, tty and session of a process that had not changed since its previous
-- sample, and its primary key (server_id, pid, start_time, ts) repeated them again: ~385 B a
-- sample. Now:
--
-- * process_identities   one row per OS process (server_id, pid, start_time) with what does
--                        not move while it lives (name, command, user, ppid, tty, session)
--                        and first_seen / last_seen (the fleet's process inventory).
-- * process_points       one row per sample: key, ts and the values that move.
-- * process_groups       one row per process_exporter series (server_id, name).
-- * process_group_points one row per group scrape: key, ts and the counters.
--
-- The key is a 64-bit hash of the identity (process_key / group_key below), computed by the
-- worker in Python from the same bytes (digest_worker/identity.py), so writing a sample needs
-- no lookup. Keys are compared with the identity they stand for when the identity is written
-- (ON CONFLICT … WHERE the identity matches … RETURNING): a collision (two identities, one
-- hash; ~n²/2^65 for n processes ever seen) is reported as a bad message, never merged.
--
-- An identity's name/command/user/… are the values of its newest upsert: a process that
-- exec()s keeps its pid and start time, so its history follows its newest name.
--
-- The old tables' names remain as views with the old columns (process_samples,
-- process_group_samples) for readers and for tests/tools that insert rows the old way (an
-- INSTEAD OF trigger, one row at a time: the digest writer writes the tables directly).
-- Existing rows are converted here, in the migration's transaction.

-- The key of an OS process: the first 8 bytes of md5(len(server_id) || server_id || pid ||
-- start_time), pid and start_time as their 8-byte big-endian binary forms (start_time in
-- PostgreSQL's microseconds since 2000-01-01). md5 for speed and availability on both sides,
-- not for security: a key is never trusted without its identity.
CREATE FUNCTION process_key(p_server_id text, p_pid bigint, p_start_time timestamptz)
RETURNS bigint LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT ('x' || left(md5(
        int4send(octet_length(p_server_id)) || convert_to(p_server_id, 'UTF8')
        || int8send(p_pid)
        || int8send((extract(epoch FROM p_start_time) * 1000000)::bigint - 946684800000000)
    ), 16))::bit(64)::bigint
$$;

CREATE FUNCTION group_key(p_server_id text, p_name text)
RETURNS bigint LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT ('x' || left(md5(
        int4send(octet_length(p_server_id)) || convert_to(p_server_id, 'UTF8')
        || convert_to(p_name, 'UTF8')
    ), 16))::bit(64)::bigint
$$;

-- fillfactor: last_seen is updated about once a minute per live process; room on the page
-- keeps those updates HOT (no index write).
CREATE TABLE process_identities (
    key          bigint      PRIMARY KEY,
    server_id    text        NOT NULL,
    pid          bigint      NOT NULL,
    start_time   timestamptz NOT NULL,
    ppid         bigint,
    session_id   integer,
    first_seen   timestamptz NOT NULL,
    last_seen    timestamptz NOT NULL,
    username     text,
    name         text        NOT NULL,
    command      text        NOT NULL DEFAULT '',
    tty          text,
    session_name text
) WITH (fillfactor = 80);
-- "the processes of one server in a window" (snapshots, the raw path with a server filter).
CREATE INDEX process_identities_server ON process_identities (server_id, last_seen);

CREATE TABLE process_groups (
    key        bigint      PRIMARY KEY,
    server_id  text        NOT NULL,
    first_seen timestamptz NOT NULL,
    last_seen  timestamptz NOT NULL,
    name       text        NOT NULL
) WITH (fillfactor = 80);
CREATE INDEX process_groups_server ON process_groups (server_id, last_seen);

-- Fixed-width columns first (no alignment padding). Primary key (key, ts): the LAG window's
-- PARTITION BY + ORDER BY, as before, at 16 bytes instead of ~60.
CREATE TABLE process_points (
    key               bigint           NOT NULL,
    ts                timestamptz      NOT NULL,
    cpu_seconds_total double precision,
    rss_bytes         bigint,
    vsz_bytes         bigint,
    cpu_percent       real,
    memory_percent    real,
    state             text,
    PRIMARY KEY (key, ts)
) PARTITION BY RANGE (ts);
CREATE TABLE process_points_default PARTITION OF process_points DEFAULT;
CREATE INDEX process_points_ts_brin ON process_points USING brin (ts);

CREATE TABLE process_group_points (
    key                                 bigint           NOT NULL,
    ts                                  timestamptz      NOT NULL,
    cpu_user_seconds_total              double precision NOT NULL,
    cpu_system_seconds_total            double precision NOT NULL,
    memory_resident_bytes               bigint           NOT NULL,
    memory_virtual_bytes                bigint,
    memory_swapped_bytes                bigint,
    read_bytes_total                    bigint,
    write_bytes_total                   bigint,
    major_page_faults_total             bigint,
    minor_page_faults_total             bigint,
    context_switches_voluntary_total    bigint,
    context_switches_nonvoluntary_total bigint,
    oldest_start_time                   timestamptz,
    num_procs                           integer          NOT NULL,
    num_threads                         integer,
    open_fds                            integer,
    PRIMARY KEY (key, ts)
) PARTITION BY RANGE (ts);
CREATE TABLE process_group_points_default PARTITION OF process_group_points DEFAULT;
CREATE INDEX process_group_points_ts_brin ON process_group_points USING brin (ts);

-- Day partitions for the days the old tables hold, so converted rows do not all land in the
-- default partition (the upkeep would move them, but in one long transaction).
DO $$
DECLARE
    pair text[];
    day date;
BEGIN
    FOREACH pair SLICE 1 IN ARRAY ARRAY[['process_samples', 'process_points'],
                                        ['process_group_samples', 'process_group_points']] LOOP
        FOR day IN EXECUTE format('SELECT DISTINCT (ts AT TIME ZONE ''UTC'')::date FROM %I',
                                  pair[1]) LOOP
            EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                           pair[2] || '_p' || to_char(day, 'YYYYMMDD'), pair[2],
                           day::timestamp AT TIME ZONE 'UTC',
                           (day + 1)::timestamp AT TIME ZONE 'UTC');
        END LOOP;
    END LOOP;
END
$$;

-- Convert: identities with the values of their newest sample, then the points.
INSERT INTO process_identities (key, server_id, pid, start_time, ppid, session_id, first_seen,
                                last_seen, username, name, command, tty, session_name)
SELECT DISTINCT ON (1) process_key(s.server_id, s.pid, s.start_time), s.server_id, s.pid,
       s.start_time, s.ppid, s.session_id,
       min(s.ts) OVER (PARTITION BY s.server_id, s.pid, s.start_time),
       max(s.ts) OVER (PARTITION BY s.server_id, s.pid, s.start_time),
       s.username, s.name, s.command, s.tty, s.session_name
FROM process_samples s
ORDER BY 1, s.ts DESC;

INSERT INTO process_points (key, ts, cpu_seconds_total, rss_bytes, vsz_bytes, cpu_percent,
                            memory_percent, state)
SELECT process_key(s.server_id, s.pid, s.start_time), s.ts, s.cpu_seconds_total, s.rss_bytes,
       s.vsz_bytes, s.cpu_percent, s.memory_percent, s.state
FROM process_samples s;

INSERT INTO process_groups (key, server_id, first_seen, last_seen, name)
SELECT group_key(s.server_id, s.name), s.server_id, min(s.ts), max(s.ts), s.name
FROM process_group_samples s
GROUP BY s.server_id, s.name;

INSERT INTO process_group_points
SELECT group_key(s.server_id, s.name), s.ts, s.cpu_user_seconds_total,
       s.cpu_system_seconds_total, s.memory_resident_bytes, s.memory_virtual_bytes,
       s.memory_swapped_bytes, s.read_bytes_total, s.write_bytes_total,
       s.major_page_faults_total, s.minor_page_faults_total,
       s.context_switches_voluntary_total, s.context_switches_nonvoluntary_total,
       s.oldest_start_time, s.num_procs, s.num_threads, s.open_fds
FROM process_group_samples s;

-- Dropping the tables drops their partitions and late-sample triggers.
DROP TABLE process_samples;
DROP TABLE process_group_samples;

CREATE VIEW process_samples AS
SELECT i.server_id, p.ts, i.pid, i.start_time, i.ppid, i.username, i.name, i.command, p.state,
       p.cpu_seconds_total, p.cpu_percent, p.memory_percent, p.rss_bytes, p.vsz_bytes, i.tty,
       i.session_name, i.session_id
FROM process_points p JOIN process_identities i ON i.key = p.key;

CREATE VIEW process_group_samples AS
SELECT g.server_id, p.ts, g.name, p.num_procs, p.cpu_user_seconds_total,
       p.cpu_system_seconds_total, p.memory_resident_bytes, p.memory_virtual_bytes,
       p.memory_swapped_bytes, p.num_threads, p.open_fds, p.read_bytes_total,
       p.write_bytes_total, p.major_page_faults_total, p.minor_page_faults_total,
       p.context_switches_voluntary_total, p.context_switches_nonvoluntary_total,
       p.oldest_start_time
FROM process_group_points p JOIN process_groups g ON g.key = p.key;

-- Old-style inserts into the views (tests, tools). A duplicate (key, ts) raises a unique
-- violation, as the old tables did. The identity's first_seen / last_seen move only by steps
-- of more than 10 minutes on this path: a bulk insert of days of samples in one statement
-- would otherwise update the same identity row once per sample inside one transaction, whose
-- row versions cannot be pruned (quadratic). The digest writer keeps them within a minute.
CREATE FUNCTION process_samples_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    k bigint := process_key(NEW.server_id, NEW.pid, NEW.start_time);
BEGIN
    INSERT INTO process_identities AS i (key, server_id, pid, start_time, ppid, session_id,
                                         first_seen, last_seen, username, name, command, tty,
                                         session_name)
    VALUES (k, NEW.server_id, NEW.pid, NEW.start_time, NEW.ppid, NEW.session_id, NEW.ts,
            NEW.ts, NEW.username, NEW.name, coalesce(NEW.command, ''), NEW.tty,
            NEW.session_name)
    ON CONFLICT (key) DO UPDATE SET
        first_seen = least(i.first_seen, EXCLUDED.first_seen),
        last_seen = greatest(i.last_seen, EXCLUDED.last_seen),
        ppid = CASE WHEN EXCLUDED.last_seen >= i.last_seen THEN EXCLUDED.ppid ELSE i.ppid END,
        username = CASE WHEN EXCLUDED.last_seen >= i.last_seen THEN EXCLUDED.username
                        ELSE i.username END,
        name = CASE WHEN EXCLUDED.last_seen >= i.last_seen THEN EXCLUDED.name ELSE i.name END,
        command = CASE WHEN EXCLUDED.last_seen >= i.last_seen THEN EXCLUDED.command
                       ELSE i.command END
    WHERE i.server_id = EXCLUDED.server_id AND i.pid = EXCLUDED.pid
      AND i.start_time = EXCLUDED.start_time
      AND (EXCLUDED.first_seen < i.first_seen - interval '10 minutes'
           OR EXCLUDED.last_seen > i.last_seen + interval '10 minutes');
    INSERT INTO process_points (key, ts, cpu_seconds_total, rss_bytes, vsz_bytes, cpu_percent,
                                memory_percent, state)
    VALUES (k, NEW.ts, NEW.cpu_seconds_total, NEW.rss_bytes, NEW.vsz_bytes, NEW.cpu_percent,
            NEW.memory_percent, NEW.state);
    RETURN NEW;
END
$$;

CREATE FUNCTION process_group_samples_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    k bigint := group_key(NEW.server_id, NEW.name);
BEGIN
    INSERT INTO process_groups AS g (key, server_id, first_seen, last_seen, name)
    VALUES (k, NEW.server_id, NEW.ts, NEW.ts, NEW.name)
    ON CONFLICT (key) DO UPDATE SET
        first_seen = least(g.first_seen, EXCLUDED.first_seen),
        last_seen = greatest(g.last_seen, EXCLUDED.last_seen)
    WHERE g.server_id = EXCLUDED.server_id AND g.name = EXCLUDED.name
      AND (EXCLUDED.first_seen < g.first_seen - interval '10 minutes'
           OR EXCLUDED.last_seen > g.last_seen + interval '10 minutes');
    INSERT INTO process_group_points
    VALUES (k, NEW.ts, NEW.cpu_user_seconds_total, NEW.cpu_system_seconds_total,
            NEW.memory_resident_bytes, NEW.memory_virtual_bytes, NEW.memory_swapped_bytes,
            NEW.read_bytes_total, NEW.write_bytes_total, NEW.major_page_faults_total,
            NEW.minor_page_faults_total, NEW.context_switches_voluntary_total,
            NEW.context_switches_nonvoluntary_total, NEW.oldest_start_time, NEW.num_procs,
            NEW.num_threads, NEW.open_fds);
    RETURN NEW;
END
$$;

CREATE TRIGGER process_samples_insert INSTEAD OF INSERT ON process_samples
    FOR EACH ROW EXECUTE FUNCTION process_samples_insert();
CREATE TRIGGER process_group_samples_insert INSTEAD OF INSERT ON process_group_samples
    FOR EACH ROW EXECUTE FUNCTION process_group_samples_insert();

-- The points of [p_from, p_to) of the servers p_server_ids (NULL: all): the one place the
-- rollup functions read samples from (the compacted history of a later migration joins
-- here). A server filter goes through the identities first, so that one server's window
-- reads that server's series only; an identity's last_seen may lag its newest sample (up to
-- ~1 minute from the writer, 10 minutes through the views' insert trigger): 15 minutes of
-- margin.
CREATE FUNCTION process_points_between(p_from timestamptz, p_to timestamptz,
                                       p_server_ids text[] DEFAULT NULL)
RETURNS SETOF process_points
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT * FROM process_points WHERE ts >= p_from AND ts < p_to
      AND (p_server_ids IS NULL OR key IN (SELECT i.key FROM process_identities i
                                           WHERE i.server_id = ANY (p_server_ids)
                                             AND i.last_seen >= p_from - interval '15 minutes'))
$$;

CREATE FUNCTION process_group_points_between(p_from timestamptz, p_to timestamptz,
                                             p_server_ids text[] DEFAULT NULL)
RETURNS SETOF process_group_points
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT * FROM process_group_points WHERE ts >= p_from AND ts < p_to
      AND (p_server_ids IS NULL OR key IN (SELECT g.key FROM process_groups g
                                           WHERE g.server_id = ANY (p_server_ids)
                                             AND g.last_seen >= p_from - interval '15 minutes'))
$$;

-- The minute-cell functions of 0002, same model and output, reading the new tables: a
-- series is now one key (= one (server_id, name) or one (server_id, pid, start_time)).
CREATE OR REPLACE FUNCTION rollup_group_minutes(p_from timestamptz, p_to timestamptz,
                                                p_server_ids text[])
RETURNS TABLE (server_id text, name text, ts timestamptz, samples integer,
               cpu_seconds double precision, cpu_core_minutes double precision,
               memory_byte_minutes double precision, memory_peak_bytes double precision,
               num_procs_minutes double precision)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    WITH lagged AS (
        SELECT g.server_id, g.name, s.ts, s.num_procs, s.memory_resident_bytes AS memory,
               s.cpu_user_seconds_total + s.cpu_system_seconds_total AS cpu,
               LAG(s.ts) OVER w AS prev_ts,
               LAG(s.cpu_user_seconds_total + s.cpu_system_seconds_total) OVER w AS prev_cpu
        FROM process_group_points_between(p_from - rollup_max_rate_gap(), p_to,
                                          p_server_ids) s
        JOIN process_groups g ON g.key = s.key
        WHERE p_server_ids IS NULL OR g.server_id = ANY (p_server_ids)
        WINDOW w AS (PARTITION BY s.key ORDER BY s.ts)
    ), rated AS (
        SELECT l.server_id, l.name, date_trunc('minute', l.ts) AS minute, l.num_procs,
               l.memory,
               CASE WHEN l.ts - l.prev_ts <= rollup_max_rate_gap()
                    THEN CASE WHEN l.cpu >= l.prev_cpu THEN l.cpu - l.prev_cpu
                              WHEN l.cpu < l.prev_cpu THEN l.cpu END
               END AS delta,
               CASE WHEN l.ts - l.prev_ts <= rollup_max_rate_gap()
                    THEN extract(epoch FROM l.ts - l.prev_ts)::double precision
               END AS dt
        FROM lagged l
        WHERE l.ts >= p_from
    )
    SELECT r.server_id, r.name, r.minute, count(*)::integer,
           coalesce(sum(r.delta), 0),
           coalesce(sum(r.delta)
                    / nullif(sum(r.dt) FILTER (WHERE r.delta IS NOT NULL), 0), 0),
           avg(r.memory)::double precision,
           max(r.memory)::double precision,
           avg(r.num_procs)::double precision
    FROM rated r
    GROUP BY r.server_id, r.name, r.minute
$$;

CREATE OR REPLACE FUNCTION rollup_process_minutes(p_from timestamptz, p_to timestamptz,
                                                  p_server_ids text[])
RETURNS TABLE (server_id text, name text, ts timestamptz, samples integer,
               cpu_seconds double precision, cpu_core_minutes double precision,
               memory_byte_minutes double precision, memory_peak_bytes double precision,
               num_procs_minutes double precision)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    WITH lagged AS (
        SELECT i.server_id, s.key, i.start_time, i.name, s.ts, s.rss_bytes AS memory,
               s.cpu_seconds_total AS cpu,
               LAG(s.ts) OVER w AS prev_ts,
               LAG(s.cpu_seconds_total) OVER w AS prev_cpu
        FROM process_points_between(p_from - rollup_max_rate_gap(), p_to, p_server_ids) s
        JOIN process_identities i ON i.key = s.key
        WHERE p_server_ids IS NULL OR i.server_id = ANY (p_server_ids)
        WINDOW w AS (PARTITION BY s.key ORDER BY s.ts)
    ), rated AS (
        SELECT l.server_id, l.key, l.name, date_trunc('minute', l.ts) AS minute, l.memory,
               CASE WHEN l.prev_ts IS NOT NULL AND l.ts - l.prev_ts <= rollup_max_rate_gap()
                    THEN CASE WHEN l.cpu >= l.prev_cpu THEN l.cpu - l.prev_cpu
                              WHEN l.cpu < l.prev_cpu THEN l.cpu END
                    WHEN l.prev_ts IS NULL AND l.start_time > 'epoch'::timestamptz
                         AND l.ts - l.start_time BETWEEN interval '0' AND rollup_max_rate_gap()
                    THEN l.cpu
               END AS delta,
               CASE WHEN l.prev_ts IS NOT NULL AND l.ts - l.prev_ts <= rollup_max_rate_gap()
                    THEN extract(epoch FROM l.ts - l.prev_ts)::double precision
                    WHEN l.prev_ts IS NULL AND l.start_time > 'epoch'::timestamptz
                         AND l.ts - l.start_time BETWEEN interval '0' AND rollup_max_rate_gap()
                    THEN greatest(extract(epoch FROM l.ts - l.start_time)::double precision, 1)
               END AS dt
        FROM lagged l
        WHERE l.ts >= p_from
    ), series AS (
        SELECT r.server_id, r.name, r.minute, count(*) AS samples, sum(r.delta) AS delta,
               sum(r.delta) / nullif(sum(r.dt) FILTER (WHERE r.delta IS NOT NULL), 0) AS cores,
               avg(r.memory) AS memory, max(r.memory) AS memory_peak
        FROM rated r
        GROUP BY r.server_id, r.name, r.minute, r.key
    )
    SELECT c.server_id, c.name, c.minute, sum(c.samples)::integer,
           coalesce(sum(c.delta), 0),
           coalesce(sum(c.cores), 0),
           coalesce(sum(c.memory), 0)::double precision,
           coalesce(sum(c.memory_peak), 0)::double precision,
           count(*)::double precision
    FROM series c
    GROUP BY c.server_id, c.name, c.minute
$$;

-- Late samples, as in 0002; the server comes from the identity, which the writer upserts in
-- the same transaction before the points.
CREATE OR REPLACE FUNCTION rollup_mark_late_groups() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
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
    INSERT INTO rollup_dirty (source, server_id, ts)
    SELECT DISTINCT 'processes', i.server_id, date_trunc('minute', n.ts)
    FROM new_rows n JOIN process_identities i ON i.key = n.key
    WHERE n.ts < statement_timestamp() - rollup_late_after();
    RETURN NULL;
END
$$;

CREATE TRIGGER process_group_points_late AFTER INSERT ON process_group_points
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION rollup_mark_late_groups();
CREATE TRIGGER process_points_late AFTER INSERT ON process_points
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION rollup_mark_late_processes();
