-- 0005: compacted history of process_exporter groups, as 0004 does for OS processes.
--
-- Same model (read 0004 first): one group_history_clock row per (server, hour) with the
-- scrape timestamps, one process_group_history row per (group key, hour) with arrays,
-- element i = sample i. Counters and sizes are delta-encoded bigint arrays (as received, not
-- delta-encoded, when the row-hour has a NULL in that column: flags bit 0..11 in the order
-- of the columns below); the two CPU counters are in clock ticks when every value is a
-- whole number of ticks (else as received in <column>_raw: flags bit 12 and 13);
-- oldest_start_time is kept as received. process_group_points_between reads hot and
-- compacted points alike. The job is digest_worker/compaction.py, on the same schedule.

CREATE TABLE group_history_clock (
    server_id text          NOT NULL,
    ts        timestamptz   NOT NULL,
    stamps    timestamptz[] NOT NULL,
    PRIMARY KEY (server_id, ts)
) PARTITION BY RANGE (ts);
CREATE TABLE group_history_clock_default PARTITION OF group_history_clock DEFAULT;

CREATE TABLE process_group_history (
    key          bigint      NOT NULL,
    ts           timestamptz NOT NULL,
    flags        integer     NOT NULL,
    slots        integer[]   NOT NULL,
    cpu_user_seconds_total bigint[],
    cpu_system_seconds_total bigint[],
    cpu_user_seconds_total_raw double precision[],
    cpu_system_seconds_total_raw double precision[],
    memory_resident_bytes bigint[],
    memory_virtual_bytes bigint[],
    memory_swapped_bytes bigint[],
    read_bytes_total bigint[],
    write_bytes_total bigint[],
    major_page_faults_total bigint[],
    minor_page_faults_total bigint[],
    context_switches_voluntary_total bigint[],
    context_switches_nonvoluntary_total bigint[],
    num_procs bigint[],
    num_threads bigint[],
    open_fds bigint[],
    oldest_start_time timestamptz[],
    PRIMARY KEY (key, ts)
) PARTITION BY RANGE (ts);
CREATE TABLE process_group_history_default PARTITION OF process_group_history DEFAULT;
ALTER TABLE process_group_history_default SET (toast_tuple_target = 128);

DO $$
DECLARE
    target text;
    col text;
BEGIN
    FOREACH target IN ARRAY ARRAY['process_group_history', 'process_group_history_default']
    LOOP
        FOREACH col IN ARRAY ARRAY['slots', 'cpu_user_seconds_total', 'cpu_system_seconds_total', 'memory_resident_bytes', 'memory_virtual_bytes', 'memory_swapped_bytes', 'read_bytes_total', 'write_bytes_total', 'major_page_faults_total', 'minor_page_faults_total', 'context_switches_voluntary_total', 'context_switches_nonvoluntary_total', 'num_procs', 'num_threads', 'open_fds', 'cpu_user_seconds_total_raw', 'cpu_system_seconds_total_raw', 'oldest_start_time']
        LOOP
            EXECUTE format('ALTER TABLE %I ALTER COLUMN %I SET COMPRESSION lz4', target, col);
        END LOOP;
    END LOOP;
    ALTER TABLE group_history_clock ALTER COLUMN stamps SET COMPRESSION lz4;
    ALTER TABLE group_history_clock_default ALTER COLUMN stamps SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'this server has no lz4: compacted group history uses pglz';
END
$$;

CREATE FUNCTION process_group_history_points(p_from timestamptz, p_to timestamptz,
                                             p_server_ids text[])
RETURNS SETOF process_group_points
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT h.key,
           c.stamps[d.slot::integer],
           CASE WHEN h.flags & 4096 = 0 THEN (d.cpu_user_seconds_total / 100)::double precision ELSE h.cpu_user_seconds_total_raw[d.o] END,
           CASE WHEN h.flags & 8192 = 0 THEN (d.cpu_system_seconds_total / 100)::double precision ELSE h.cpu_system_seconds_total_raw[d.o] END,
           CASE WHEN h.flags & 1 = 0 THEN d.memory_resident_bytes::bigint ELSE h.memory_resident_bytes[d.o]::bigint END,
           CASE WHEN h.flags & 2 = 0 THEN d.memory_virtual_bytes::bigint ELSE h.memory_virtual_bytes[d.o]::bigint END,
           CASE WHEN h.flags & 4 = 0 THEN d.memory_swapped_bytes::bigint ELSE h.memory_swapped_bytes[d.o]::bigint END,
           CASE WHEN h.flags & 8 = 0 THEN d.read_bytes_total::bigint ELSE h.read_bytes_total[d.o]::bigint END,
           CASE WHEN h.flags & 16 = 0 THEN d.write_bytes_total::bigint ELSE h.write_bytes_total[d.o]::bigint END,
           CASE WHEN h.flags & 32 = 0 THEN d.major_page_faults_total::bigint ELSE h.major_page_faults_total[d.o]::bigint END,
           CASE WHEN h.flags & 64 = 0 THEN d.minor_page_faults_total::bigint ELSE h.minor_page_faults_total[d.o]::bigint END,
           CASE WHEN h.flags & 128 = 0 THEN d.context_switches_voluntary_total::bigint ELSE h.context_switches_voluntary_total[d.o]::bigint END,
           CASE WHEN h.flags & 256 = 0 THEN d.context_switches_nonvoluntary_total::bigint ELSE h.context_switches_nonvoluntary_total[d.o]::bigint END,
           h.oldest_start_time[d.o],
           CASE WHEN h.flags & 512 = 0 THEN d.num_procs::integer ELSE h.num_procs[d.o]::integer END,
           CASE WHEN h.flags & 1024 = 0 THEN d.num_threads::integer ELSE h.num_threads[d.o]::integer END,
           CASE WHEN h.flags & 2048 = 0 THEN d.open_fds::integer ELSE h.open_fds[d.o]::integer END
    FROM process_group_history h
    JOIN process_groups g ON g.key = h.key
    JOIN group_history_clock c ON c.server_id = g.server_id AND c.ts = h.ts
    CROSS JOIN LATERAL (
        SELECT u.o, sum(u.a0) OVER w AS slot, sum(u.a1) OVER w AS cpu_user_seconds_total, sum(u.a2) OVER w AS cpu_system_seconds_total, sum(u.a3) OVER w AS memory_resident_bytes, sum(u.a4) OVER w AS memory_virtual_bytes, sum(u.a5) OVER w AS memory_swapped_bytes, sum(u.a6) OVER w AS read_bytes_total, sum(u.a7) OVER w AS write_bytes_total, sum(u.a8) OVER w AS major_page_faults_total, sum(u.a9) OVER w AS minor_page_faults_total, sum(u.a10) OVER w AS context_switches_voluntary_total, sum(u.a11) OVER w AS context_switches_nonvoluntary_total, sum(u.a12) OVER w AS num_procs, sum(u.a13) OVER w AS num_threads, sum(u.a14) OVER w AS open_fds
        FROM unnest(h.slots, h.cpu_user_seconds_total, h.cpu_system_seconds_total, h.memory_resident_bytes, h.memory_virtual_bytes, h.memory_swapped_bytes, h.read_bytes_total, h.write_bytes_total, h.major_page_faults_total, h.minor_page_faults_total, h.context_switches_voluntary_total, h.context_switches_nonvoluntary_total, h.num_procs, h.num_threads, h.open_fds)
             WITH ORDINALITY AS u(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, o)
        WINDOW w AS (ORDER BY u.o)
    ) d
    WHERE h.ts > p_from - interval '1 hour' AND h.ts < p_to
      AND c.ts > p_from - interval '1 hour' AND c.ts < p_to
      AND (p_server_ids IS NULL OR g.server_id = ANY (p_server_ids))
$$;

CREATE OR REPLACE FUNCTION process_group_points_between(p_from timestamptz, p_to timestamptz,
        p_server_ids text[] DEFAULT NULL)
RETURNS SETOF process_group_points
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT * FROM process_group_points WHERE ts >= p_from AND ts < p_to
      AND (p_server_ids IS NULL OR key IN (SELECT g.key FROM process_groups g
                                           WHERE g.server_id = ANY (p_server_ids)
                                             AND g.last_seen >= p_from - interval '15 minutes'))
    UNION ALL
    SELECT h.* FROM process_group_history_points(p_from, p_to, p_server_ids) h
    WHERE h.ts >= p_from AND h.ts < p_to
      AND NOT EXISTS (SELECT 1 FROM process_group_points p
                      WHERE p.key = h.key AND p.ts = h.ts AND p.ts >= p_from AND p.ts < p_to)
$$;

CREATE OR REPLACE VIEW process_group_samples AS
SELECT g.server_id, p.ts, g.name, p.num_procs, p.cpu_user_seconds_total,
       p.cpu_system_seconds_total, p.memory_resident_bytes, p.memory_virtual_bytes,
       p.memory_swapped_bytes, p.num_threads, p.open_fds, p.read_bytes_total,
       p.write_bytes_total, p.major_page_faults_total, p.minor_page_faults_total,
       p.context_switches_voluntary_total, p.context_switches_nonvoluntary_total,
       p.oldest_start_time
FROM process_group_points_between('-infinity', 'infinity') p
JOIN process_groups g ON g.key = p.key;
