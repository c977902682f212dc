-- 0006: rollup cells keyed by small integers instead of repeated text.
--
-- Why: every cell of 0002 repeated the source ('groups' / 'processes'), the server id (32
-- characters on a real fleet) and the name as text, in the heap and again in its primary key
-- index: ~140 B of heap and ~75 B of index per cell, 21.1 B per process sample for the four
-- tables; 11.9 B with the keys below (bench/bench_storage.py, docs/BENCHMARKS.md "Storage").
-- Now:
--
-- * rollup_names   one row per (source, name): name_id, the fleet tables' key.
-- * rollup_series  one row per (name_id, server_id), i.e. per (source, server, name):
--                  series_id, the per-server tables' key. One 4-byte id stands for all
--                  three columns; a separate server id and name id would cost 8 B more per
--                  cell in the heap and in the index. The servers table is left alone: the
--                  digest writer upserts it on the hot path.
-- * rollup_series_names (view) series_id with its source, server_id and name: what readers
--                  join to filter and label cells.
--
-- The cell tables keep their names, partitioning and columns of values (float8, exact), with
-- fixed-width columns ordered so that nothing is padded: a per-server cell is 24 B of tuple
-- header + 56 B (series_id, samples, ts, five float8) = 80 B, its key (series_id, ts) 16 B.
-- Fleet cells are keyed (source_code, ts, name_id): the fleet query reads every name of one
-- source in a window, one index range as with (source, ts, name). source_code
-- (rollup_source_code(): 1 groups, 2 processes) repeats what name_id implies, at no cost in
-- the heap (it fills what would be padding) and 8 B in the index: without it a window's
-- range holds both sources, and a backfill of one source after the other splits the index
-- pages of the other in half.
--
-- Only the rollup job (digest_worker/rollup.py) adds dictionary rows, under its advisory
-- lock; it adds those it lacks only, so identity values are not spent on conflicts.
-- Dictionary rows are never deleted (a few per name and server ever seen: small).
-- rollup_watermarks and rollup_dirty (late samples) are unchanged. Existing cells are
-- converted here, in the migration's transaction, values as they were.

CREATE FUNCTION rollup_source_code(p_source text) RETURNS smallint
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE p_source WHEN 'groups' THEN 1 WHEN 'processes' THEN 2 END::smallint
$$;

CREATE TABLE rollup_names (
    name_id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source  text    NOT NULL CHECK (source IN ('groups', 'processes')),
    name    text    NOT NULL,
    UNIQUE (source, name)
);

CREATE TABLE rollup_series (
    series_id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name_id   integer NOT NULL,
    server_id text    NOT NULL,
    -- (name_id, server_id): "which servers ran these names" (the fleet path's server count);
    -- (server_id): the series of the servers a query selects.
    UNIQUE (name_id, server_id)
);
CREATE INDEX rollup_series_server ON rollup_series (server_id);

CREATE VIEW rollup_series_names AS
SELECT s.series_id, s.name_id, n.source, s.server_id, n.name
FROM rollup_series s JOIN rollup_names n ON n.name_id = s.name_id;

-- Dictionaries of the existing cells (every fleet name is also a per-server name, but a
-- database may have been edited by hand: take both).
INSERT INTO rollup_names (source, name)
SELECT source, name FROM rollup_minute
UNION SELECT source, name FROM rollup_hour
UNION SELECT source, name FROM rollup_fleet_minute
UNION SELECT source, name FROM rollup_fleet_hour
ORDER BY 1, 2;

INSERT INTO rollup_series (name_id, server_id)
SELECT n.name_id, c.server_id
FROM (SELECT source, server_id, name FROM rollup_minute
      UNION SELECT source, server_id, name FROM rollup_hour) c
JOIN rollup_names n ON n.source = c.source AND n.name = c.name
ORDER BY c.server_id, n.name_id;

-- The cells with their new keys, while the old tables still exist.
CREATE TEMP TABLE rollup_convert_minute ON COMMIT DROP AS
SELECT k.series_id, c.samples, c.ts, c.cpu_seconds, c.cpu_core_minutes, c.memory_byte_minutes,
       c.memory_peak_bytes, c.num_procs_minutes
FROM rollup_minute c JOIN rollup_series_names k
  ON k.source = c.source AND k.server_id = c.server_id AND k.name = c.name;
CREATE TEMP TABLE rollup_convert_hour ON COMMIT DROP AS
SELECT k.series_id, c.samples, c.ts, c.cpu_seconds, c.cpu_core_minutes, c.memory_byte_minutes,
       c.memory_peak_bytes, c.num_procs_minutes
FROM rollup_hour c JOIN rollup_series_names k
  ON k.source = c.source AND k.server_id = c.server_id AND k.name = c.name;
CREATE TEMP TABLE rollup_convert_fleet_minute ON COMMIT DROP AS
SELECT n.name_id, c.servers, c.ts, c.samples, c.cpu_seconds, c.cpu_core_minutes,
       c.memory_byte_minutes, c.memory_peak_bytes, c.num_procs_minutes,
       rollup_source_code(c.source) AS source_code
FROM rollup_fleet_minute c JOIN rollup_names n ON n.source = c.source AND n.name = c.name;
CREATE TEMP TABLE rollup_convert_fleet_hour ON COMMIT DROP AS
SELECT n.name_id, c.servers, c.ts, c.samples, c.cpu_seconds, c.cpu_core_minutes,
       c.memory_byte_minutes, c.memory_peak_bytes, c.num_procs_minutes,
       rollup_source_code(c.source) AS source_code
FROM rollup_fleet_hour c JOIN rollup_names n ON n.source = c.source AND n.name = c.name;

-- The day partitions the old tables have (the upkeep made them, some days ahead): the new
-- tables get the same ones.
CREATE TEMP TABLE rollup_convert_days ON COMMIT DROP AS
SELECT p.relname AS table_name, to_date(substring(c.relname FROM '_p(\d{8})$'), 'YYYYMMDD') AS day
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
JOIN pg_class p ON p.oid = i.inhparent
WHERE p.relname IN ('rollup_minute', 'rollup_hour', 'rollup_fleet_minute', 'rollup_fleet_hour')
  AND c.relname ~ '_p\d{8}$';

-- Dropping a table drops its partitions.
DROP TABLE rollup_minute;
DROP TABLE rollup_hour;
DROP TABLE rollup_fleet_minute;
DROP TABLE rollup_fleet_hour;

CREATE TABLE rollup_minute (
    series_id           integer          NOT NULL,
    samples             integer          NOT NULL,
    ts                  timestamptz      NOT NULL,
    cpu_seconds         double precision NOT NULL,
    cpu_core_minutes    double precision NOT NULL,
    memory_byte_minutes double precision NOT NULL,
    memory_peak_bytes   double precision NOT NULL,
    num_procs_minutes   double precision NOT NULL,
    -- series first: a server's window is one short range per series of the server, and "did
    -- server S run name N in the window" one probe. No second index: the biggest rollup.
    PRIMARY KEY (series_id, ts)
) PARTITION BY RANGE (ts);
CREATE TABLE rollup_minute_default PARTITION OF rollup_minute DEFAULT;

CREATE TABLE rollup_hour (
    series_id           integer          NOT NULL,
    samples             integer          NOT NULL,
    ts                  timestamptz      NOT NULL,
    cpu_seconds         double precision NOT NULL,
    cpu_core_minutes    double precision NOT NULL,
    memory_byte_minutes double precision NOT NULL,
    memory_peak_bytes   double precision NOT NULL,
    num_procs_minutes   double precision NOT NULL,
    PRIMARY KEY (series_id, ts)
) PARTITION BY RANGE (ts);
CREATE TABLE rollup_hour_default PARTITION OF rollup_hour DEFAULT;

CREATE TABLE rollup_fleet_minute (
    name_id             integer          NOT NULL,
    servers             integer          NOT NULL,
    ts                  timestamptz      NOT NULL,
    samples             integer          NOT NULL,
    cpu_seconds         double precision NOT NULL,
    cpu_core_minutes    double precision NOT NULL,
    memory_byte_minutes double precision NOT NULL,
    memory_peak_bytes   double precision NOT NULL,
    num_procs_minutes   double precision NOT NULL,
    source_code         smallint         NOT NULL,
    PRIMARY KEY (source_code, ts, name_id)
) PARTITION BY RANGE (ts);
CREATE TABLE rollup_fleet_minute_default PARTITION OF rollup_fleet_minute DEFAULT;

CREATE TABLE rollup_fleet_hour (
    name_id             integer          NOT NULL,
    servers             integer          NOT NULL,
    ts                  timestamptz      NOT NULL,
    samples             integer          NOT NULL,
    cpu_seconds         double precision NOT NULL,
    cpu_core_minutes    double precision NOT NULL,
    memory_byte_minutes double precision NOT NULL,
    memory_peak_bytes   double precision NOT NULL,
    num_procs_minutes   double precision NOT NULL,
    source_code         smallint         NOT NULL,
    PRIMARY KEY (source_code, ts, name_id)
) PARTITION BY RANGE (ts);
CREATE TABLE rollup_fleet_hour_default PARTITION OF rollup_fleet_hour DEFAULT;

DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT DISTINCT table_name, day FROM rollup_convert_days ORDER BY 1, 2 LOOP
        EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                       r.table_name || '_p' || to_char(r.day, 'YYYYMMDD'), r.table_name,
                       r.day::timestamp AT TIME ZONE 'UTC',
                       (r.day + 1)::timestamp AT TIME ZONE 'UTC');
    END LOOP;
END
$$;

-- In key order: the indexes are built dense.
INSERT INTO rollup_minute SELECT * FROM rollup_convert_minute ORDER BY series_id, ts;
INSERT INTO rollup_hour SELECT * FROM rollup_convert_hour ORDER BY series_id, ts;
INSERT INTO rollup_fleet_minute
SELECT * FROM rollup_convert_fleet_minute ORDER BY source_code, ts, name_id;
INSERT INTO rollup_fleet_hour
SELECT * FROM rollup_convert_fleet_hour ORDER BY source_code, ts, name_id;
