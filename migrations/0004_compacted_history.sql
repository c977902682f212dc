-- 0004: compacted per-process history, lossless.
--
-- Closed hours older than the hot window are rewritten by the storage upkeep
-- (digest_worker/compaction.py) from process_points (one row per sample, ~130 B) into:
--
-- * history_clock    one row per (server, hour): every distinct sample timestamp of that
--                    server's processes in the hour, sorted. A host's processes share the
--                    report's timestamp, so a timestamp is stored once per host, not once per
--                    process (delta-of-delta per series would keep the agent's jitter).
-- * process_history  one row per (process key, hour) with arrays, element i = sample i:
--     slots           index of the sample's timestamp in the clock, delta-encoded (mostly 1s)
--     cpu             cpu_seconds_total in clock ticks (1/100 s), delta-encoded — when every
--                     value of the row is a whole number of ticks (flags bit 4 clear);
--                     otherwise cpu_raw holds the float8 values as received (bit 4 set)
--     rss, vsz        bytes, delta-encoded; as received when a value is NULL (bit 1 / bit 2)
--     cpu_percent, memory_percent, state   as received (NULL when the whole row has none)
--   The arrays are compressed (TOAST, lz4 when the server has it), and toast_tuple_target is lowered so that
--   rows of a few hundred bytes are compressed too: runs of zeros and repeated values cost
--   almost nothing, which is what idle processes are made of.
--
-- Decoding (process_history_points) gives back every sample's ts, counters and sizes
-- exactly: integers are sums of their deltas, ticks / 100 is the float8 nearest to the
-- original (a row is encoded in ticks only when round(v * 100) / 100 = v for every v).
--
-- A sample that arrives for an hour already compacted (spool replay, redelivery) lands in
-- process_points like any other; the next compaction of that hour decodes the server-hour,
-- adds the hot rows, keeps one row per (key, ts) and rewrites it. Until then
-- process_points_between reads both and drops a compacted point that is also hot.
--
-- Both tables are partitioned by day on ts (the hour) like the sample tables, so retention
-- is a partition drop (digest_worker/partitions.py).

CREATE TABLE history_clock (
    server_id text          NOT NULL,
    ts        timestamptz   NOT NULL,
    stamps    timestamptz[] NOT NULL,
    PRIMARY KEY (server_id, ts)
) PARTITION BY RANGE (ts);
CREATE TABLE history_clock_default PARTITION OF history_clock DEFAULT;

CREATE TABLE process_history (
    key            bigint           NOT NULL,
    ts             timestamptz      NOT NULL,
    flags          smallint         NOT NULL,
    slots          integer[]        NOT NULL,
    cpu            bigint[],
    cpu_raw        double precision[],
    rss            bigint[],
    vsz            bigint[],
    cpu_percent    real[],
    memory_percent real[],
    state          text[],
    PRIMARY KEY (key, ts)
) PARTITION BY RANGE (ts);
CREATE TABLE process_history_default PARTITION OF process_history DEFAULT;

-- lz4 where the server has it (Debian's and most distributions' PostgreSQL 15 do); a server
-- built without it (e.g. the embedded test server) keeps the default, pglz, which also
-- squeezes runs of zeros but gives up on rows it cannot shrink by 25 %. New day partitions
-- copy the column compression (digest_worker/partitions.py: LIKE … INCLUDING COMPRESSION)
-- and get toast_tuple_target there.
ALTER TABLE process_history_default SET (toast_tuple_target = 128);
DO $$
DECLARE
    target text;
    col text;
BEGIN
    FOREACH target IN ARRAY ARRAY['process_history', 'process_history_default'] LOOP
        FOREACH col IN ARRAY ARRAY['slots', 'cpu', 'cpu_raw', 'rss', 'vsz', 'cpu_percent',
                                   'memory_percent', 'state'] LOOP
            EXECUTE format('ALTER TABLE %I ALTER COLUMN %I SET COMPRESSION lz4', target, col);
        END LOOP;
    END LOOP;
    ALTER TABLE history_clock ALTER COLUMN stamps SET COMPRESSION lz4;
    ALTER TABLE history_clock_default ALTER COLUMN stamps SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'this server has no lz4: compacted history uses pglz';
END
$$;

-- The compacted samples of the hours that overlap [p_from, p_to), for the servers
-- p_server_ids (NULL: all). Rows are whole hours: callers filter ts themselves.
CREATE FUNCTION process_history_points(p_from timestamptz, p_to timestamptz,
                                       p_server_ids text[])
RETURNS SETOF process_points
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT h.key, c.stamps[d.slot::integer],
           CASE WHEN h.flags & 4 = 0 THEN (d.ticks / 100)::double precision
                ELSE h.cpu_raw[d.o] END,
           CASE WHEN h.flags & 1 = 0 THEN d.rss::bigint ELSE h.rss[d.o] END,
           CASE WHEN h.flags & 2 = 0 THEN d.vsz::bigint ELSE h.vsz[d.o] END,
           h.cpu_percent[d.o], h.memory_percent[d.o], h.state[d.o]
    FROM process_history h
    JOIN process_identities i ON i.key = h.key
    JOIN history_clock c ON c.server_id = i.server_id AND c.ts = h.ts
    CROSS JOIN LATERAL (
        SELECT u.o, sum(u.s) OVER w AS slot, sum(u.c) OVER w AS ticks,
               sum(u.r) OVER w AS rss, sum(u.v) OVER w AS vsz
        FROM unnest(h.slots, h.cpu, h.rss, h.vsz) WITH ORDINALITY AS u(s, c, r, v, o)
        WINDOW w AS (ORDER BY u.o)
    ) d
    WHERE h.ts > p_from - interval '1 hour' AND h.ts < p_to
      AND c.ts > p_from - interval '1 hour' AND c.ts < p_to
      AND (p_server_ids IS NULL OR i.server_id = ANY (p_server_ids))
$$;

-- Hot and compacted points of [p_from, p_to), one per (key, ts).
CREATE OR REPLACE FUNCTION process_points_between(p_from timestamptz, p_to timestamptz,
        p_server_ids text[] DEFAULT NULL)
RETURNS SETOF process_points
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT * FROM process_points WHERE ts >= p_from AND ts < p_to
      AND (p_server_ids IS NULL OR key IN (SELECT i.key FROM process_identities i
                                           WHERE i.server_id = ANY (p_server_ids)
                                             AND i.last_seen >= p_from - interval '15 minutes'))
    UNION ALL
    SELECT h.* FROM process_history_points(p_from, p_to, p_server_ids) h
    WHERE h.ts >= p_from AND h.ts < p_to
      AND NOT EXISTS (SELECT 1 FROM process_points p
                      WHERE p.key = h.key AND p.ts = h.ts AND p.ts >= p_from AND p.ts < p_to)
$$;

CREATE OR REPLACE VIEW process_samples AS
SELECT i.server_id, p.ts, i.pid, i.start_time, i.ppid, i.username, i.name, i.command, p.state,
       p.cpu_seconds_total, p.cpu_percent, p.memory_percent, p.rss_bytes, p.vsz_bytes, i.tty,
       i.session_name, i.session_id
FROM process_points_between('-infinity', 'infinity') p
JOIN process_identities i ON i.key = p.key;
