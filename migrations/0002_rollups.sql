-- 0002: per-minute and per-hour rollups of the samples, for the top-processes query.
--
-- The query side (ingest_gateway/queries/) and the rollup job (digest_worker/rollup.py) both
-- read "minute cells" from the two functions defined here, so the raw path and the rollup path
-- compute rates with the very same SQL. The model, in full (README "## API" says the same):
--
-- * Rate of one series, sample by sample, with LAG() over the series ordered by ts.
--   Groups: series (server_id, name), counter user+system seconds. OS processes: series
--   (server_id, pid, start_time), counter cpu_seconds_total.
--   - delta = value - previous value; a counter that went down was reset: delta = value.
--   - dt = ts - previous ts. A gap longer than rollup_max_rate_gap() (120 s, eight default
--     15 s intervals) yields no rate: the outage is not smeared over the next sample.
--   - The first sample of a series only anchors the next delta, except for an OS process
--     that started at most rollup_max_rate_gap() before it (its start_time is known): then its
--     whole counter was spent since it started, delta = value, dt = ts - start_time (at least
--     1 s). A reused pid has a new start_time, so it is a new series.
-- * Minute cell (server_id, name, minute), over the samples with ts in that minute:
--     samples              number of samples
--     cpu_seconds          sum of the deltas
--     cpu_core_minutes     sum over the series of (sum of deltas / sum of dt): the cores the
--                          name used during that minute (rate-normalised, so sampling jitter
--                          does not make a steady process look lumpy)
--     memory_byte_minutes  sum over the series of their average resident memory
--     memory_peak_bytes    sum over the series of their highest resident memory
--     num_procs_minutes    groups: sum of the average num_procs; processes: number of series
--   A cell covers one minute, so the "_minutes" columns of a minute cell are per-minute
--   values; hour cells add them up over the hour's minutes (max for memory_peak_bytes).
--
-- Tables (all partitioned by day on ts like the sample tables; the rollup job creates and
-- drops their partitions with the retention of the samples):
--   rollup_minute / rollup_hour              one row per (source, server_id, name, bucket)
--   rollup_fleet_minute / rollup_fleet_hour  one row per (source, name, bucket): the sum over
--                                            every server, so the default "all servers" query
--                                            reads ~100 rows per bucket instead of ~10,000
--   rollup_watermarks  per source: every minute before minute_until is rolled up
--   rollup_dirty       (source, server_id, minute) of samples that arrived after their minute
--                      may have been rolled up (agent spool replays, worker backlog); the job
--                      recomputes those minutes. Filled by a statement trigger on the sample
--                      tables; no unique key, so concurrent writers never wait on each other.

CREATE FUNCTION rollup_max_rate_gap() RETURNS interval
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT interval '120 seconds' $$;

-- Minute cells of process_exporter groups for samples with p_from <= ts < p_to (all servers
-- when p_server_ids is NULL). Reads rollup_max_rate_gap() before p_from for the LAG, so the
-- cells do not depend on where the window starts.
CREATE FUNCTION rollup_group_minutes(p_from timestamptz, p_to timestamptz, p_server_ids text[])
RETURNS TABLE (server_id text, name text, ts timestamptz, samples integer,
               cpu_seconds double precision, cpu_core_minutes double precision,
               memory_byte_minutes double precision, memory_peak_bytes double precision,
               num_procs_minutes double precision)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    WITH lagged AS (
        SELECT s.server_id, s.name, s.ts, s.num_procs, s.memory_resident_bytes AS memory,
               s.cpu_user_seconds_total + s.cpu_system_seconds_total AS cpu,
               LAG(s.ts) OVER w AS prev_ts,
               LAG(s.cpu_user_seconds_total + s.cpu_system_seconds_total) OVER w AS prev_cpu
        FROM process_group_samples s
        WHERE s.ts >= p_from - rollup_max_rate_gap() AND s.ts < p_to
          AND (p_server_ids IS NULL OR s.server_id = ANY (p_server_ids))
        WINDOW w AS (PARTITION BY s.server_id, s.name ORDER BY s.ts)
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

-- Minute cells of OS processes (ps / tasklist), same rules; per-series values are summed over
-- the processes of one name. A NULL counter or rss counts as "no value" for that sample.
CREATE FUNCTION rollup_process_minutes(p_from timestamptz, p_to timestamptz,
                                       p_server_ids text[])
RETURNS TABLE (server_id text, name text, ts timestamptz, samples integer,
               cpu_seconds double precision, cpu_core_minutes double precision,
               memory_byte_minutes double precision, memory_peak_bytes double precision,
               num_procs_minutes double precision)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    WITH lagged AS (
        SELECT s.server_id, s.pid, s.start_time, s.name, s.ts, s.rss_bytes AS memory,
               s.cpu_seconds_total AS cpu,
               LAG(s.ts) OVER w AS prev_ts,
               LAG(s.cpu_seconds_total) OVER w AS prev_cpu
        FROM process_samples s
        WHERE s.ts >= p_from - rollup_max_rate_gap() AND s.ts < p_to
          AND (p_server_ids IS NULL OR s.server_id = ANY (p_server_ids))
        WINDOW w AS (PARTITION BY s.server_id, s.pid, s.start_time ORDER BY s.ts)
    ), rated AS (
        SELECT l.server_id, l.pid, l.start_time, l.name, date_trunc('minute', l.ts) AS minute,
               l.memory,
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
        GROUP BY r.server_id, r.name, r.minute, r.pid, r.start_time
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

CREATE TABLE rollup_minute (
    source              text             NOT NULL,
    server_id           text             NOT NULL,
    name                text             NOT NULL,
    ts                  timestamptz      NOT NULL,
    samples             integer          NOT NULL,
    cpu_seconds         double precision NOT NULL,
    cpu_core_minutes    double precision NOT NULL,
    memory_byte_minutes double precision NOT NULL,
    memory_peak_bytes   double precision NOT NULL,
    num_procs_minutes   double precision NOT NULL,
    -- (source, server_id, ts) first: a "--server ID" window is one index range, and "did
    -- server S run name N in the window" (the server count of the top names on the fleet
    -- path) is one short probe. No second index: this is the biggest rollup table.
    PRIMARY KEY (source, server_id, ts, name)
) PARTITION BY RANGE (ts);
CREATE TABLE rollup_minute_default PARTITION OF rollup_minute DEFAULT;

CREATE TABLE rollup_hour (
    source              text             NOT NULL,
    server_id           text             NOT NULL,
    name                text             NOT NULL,
    ts                  timestamptz      NOT NULL,
    samples             integer          NOT NULL,
    cpu_seconds         double precision NOT NULL,
    cpu_core_minutes    double precision NOT NULL,
    memory_byte_minutes double precision NOT NULL,
    memory_peak_bytes   double precision NOT NULL,
    num_procs_minutes   double precision NOT NULL,
    PRIMARY KEY (source, server_id, ts, name)
) PARTITION BY RANGE (ts);
CREATE TABLE rollup_hour_default PARTITION OF rollup_hour DEFAULT;

CREATE TABLE rollup_fleet_minute (
    source              text             NOT NULL,
    name                text             NOT NULL,
    ts                  timestamptz      NOT NULL,
    servers             integer          NOT NULL,
    samples             integer          NOT NULL,
    cpu_seconds         double precision NOT NULL,
    cpu_core_minutes    double precision NOT NULL,
    memory_byte_minutes double precision NOT NULL,
    memory_peak_bytes   double precision NOT NULL,
    num_procs_minutes   double precision NOT NULL,
    PRIMARY KEY (source, ts, name)
) PARTITION BY RANGE (ts);
CREATE TABLE rollup_fleet_minute_default PARTITION OF rollup_fleet_minute DEFAULT;

CREATE TABLE rollup_fleet_hour (
    source              text             NOT NULL,
    name                text             NOT NULL,
    ts                  timestamptz      NOT NULL,
    servers             integer          NOT NULL,
    samples             integer          NOT NULL,
    cpu_seconds         double precision NOT NULL,
    cpu_core_minutes    double precision NOT NULL,
    memory_byte_minutes double precision NOT NULL,
    memory_peak_bytes   double precision NOT NULL,
    num_procs_minutes   double precision NOT NULL,
    PRIMARY KEY (source, ts, name)
) PARTITION BY RANGE (ts);
CREATE TABLE rollup_fleet_hour_default PARTITION OF rollup_fleet_hour DEFAULT;

CREATE TABLE rollup_watermarks (
    source       text        PRIMARY KEY CHECK (source IN ('groups', 'processes')),
    minute_until timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE rollup_dirty (
    source    text        NOT NULL,
    server_id text        NOT NULL,
    ts        timestamptz NOT NULL
);

-- Late samples: rows whose ts is more than rollup_late_after() older than the statement that
-- inserts them. The rollup job only rolls up minutes older than its settle delay
-- (digest_worker/rollup.py SETTLE_S, which must exceed this plus the longest insert
-- transaction), so a row that is not marked here is always seen by the run that rolls up its
-- minute. The trigger reads the statement's transition table once: a few % of COPY time.
CREATE FUNCTION rollup_late_after() RETURNS interval
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT interval '10 seconds' $$;

CREATE FUNCTION rollup_mark_late_groups() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO rollup_dirty (source, server_id, ts)
    SELECT DISTINCT 'groups', n.server_id, date_trunc('minute', n.ts)
    FROM new_rows n
    WHERE n.ts < statement_timestamp() - rollup_late_after();
    RETURN NULL;
END
$$;

CREATE FUNCTION rollup_mark_late_processes() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO rollup_dirty (source, server_id, ts)
    SELECT DISTINCT 'processes', n.server_id, date_trunc('minute', n.ts)
    FROM new_rows n
    WHERE n.ts < statement_timestamp() - rollup_late_after();
    RETURN NULL;
END
$$;

CREATE TRIGGER process_group_samples_late AFTER INSERT ON process_group_samples
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION rollup_mark_late_groups();
CREATE TRIGGER process_samples_late AFTER INSERT ON process_samples
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION rollup_mark_late_processes();
