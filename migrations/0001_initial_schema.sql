-- 0001: servers, snapshots and the two sample tables.
--
-- Rules that hold for every table here:
-- * Keys include server_id (and ts for time series) so the schema can be distributed by
--   server_id (e.g. Citus) without redesign, and partitioned by time.
-- * No foreign keys: rows arrive at-least-once and in any order from many workers; a sample
--   may land before its server's metadata. Unique keys + ON CONFLICT DO NOTHING make
--   redeliveries harmless.
-- * Time series are partitioned by RANGE (ts), one partition per UTC day named
--   <table>_pYYYYMMDD, plus <table>_default for a row whose day has no partition yet.
--   The workers create partitions ahead of time, move rows out of the default partition and
--   drop the days older than the retention (digest_worker/partitions.py): retention is a
--   DROP TABLE, never a DELETE.
-- * Column order of the sample tables follows ingest_gateway/stream.py COLUMNS, so a decoded
--   stream row is a table row.

-- One row per host. Metadata (hostname, os, agent version) comes from the report's host
-- message and may arrive after the host's first samples: it stays NULL until then.
-- metadata_at is the collection time of the metadata held, so a redelivered older report
-- never overwrites newer metadata.
CREATE TABLE servers (
    server_id      text        PRIMARY KEY,
    hostname       text,
    os_type        text,
    os_version     text,
    agent_version  text,
    boot_id        text,
    last_report_id text,
    metadata_at    timestamptz,
    first_seen_at  timestamptz NOT NULL,
    last_seen_at   timestamptz NOT NULL
);

-- The "commands" table of the two-table design: one row per raw collector output, kept for
-- reprocessing. The same output twice (same sha256 at the same ts) is one row.
CREATE TABLE snapshots (
    server_id      text        NOT NULL,
    ts             timestamptz NOT NULL,
    source         text        NOT NULL,
    sha256         text        NOT NULL,
    process_count  integer     NOT NULL DEFAULT 0,
    unparsed_lines integer     NOT NULL DEFAULT 0,
    raw_output     text,
    PRIMARY KEY (server_id, ts, sha256)
) PARTITION BY RANGE (ts);
CREATE TABLE snapshots_default PARTITION OF snapshots DEFAULT;

-- One row per process_exporter group per scrape. A series is (server_id, name); counters are
-- cumulative and rates are computed at query time with LAG() over one series ordered by ts.
--
-- Indexes, for the top-processes query ("WHERE ts >= now() - H hours", then
-- LAG(...) OVER (PARTITION BY server_id, name ORDER BY ts)):
-- * the ts range is served first by partition pruning (only the days of the window are read);
-- * the primary key (server_id, name, ts) is exactly the window's PARTITION BY + ORDER BY, so
--   the planner can read it in index order and skip the sort, and a "--server ID" filter is a
--   prefix of it;
-- * a BRIN index on ts narrows a range inside a day (e.g. the last hour of today) for almost
--   nothing: rows arrive roughly in ts order and BRIN costs little on insert, unlike a second
--   btree, which would cut the ingest rate.
CREATE TABLE process_group_samples (
    server_id                           text             NOT NULL,
    ts                                  timestamptz      NOT NULL,
    name                                text             NOT NULL,
    num_procs                           integer          NOT NULL,
    cpu_user_seconds_total              double precision NOT NULL,
    cpu_system_seconds_total            double precision NOT NULL,
    memory_resident_bytes               bigint           NOT NULL,
    memory_virtual_bytes                bigint,
    memory_swapped_bytes                bigint,
    num_threads                         integer,
    open_fds                            integer,
    read_bytes_total                    bigint,
    write_bytes_total                   bigint,
    major_page_faults_total             bigint,
    minor_page_faults_total             bigint,
    context_switches_voluntary_total    bigint,
    context_switches_nonvoluntary_total bigint,
    oldest_start_time                   timestamptz,
    PRIMARY KEY (server_id, name, ts)
) PARTITION BY RANGE (ts);
CREATE TABLE process_group_samples_default PARTITION OF process_group_samples DEFAULT;
CREATE INDEX process_group_samples_ts_brin ON process_group_samples USING brin (ts);

-- One row per OS process (ps / tasklist) per collection. A series is
-- (server_id, pid, start_time) because pids are reused. start_time is part of the key and a
-- key column cannot be NULL: a tool that gives no start time (tasklist) is stored with the
-- sentinel '1970-01-01 00:00:00+00' (the epoch), which reads as "unknown start".
--
-- Indexes, as for the group samples: partition pruning for the ts range; the primary key
-- (server_id, pid, start_time, ts) is the window's PARTITION BY + ORDER BY of
-- LAG(cpu_seconds_total) OVER (PARTITION BY server_id, pid, start_time ORDER BY ts); a BRIN
-- on ts for short windows inside a day.
CREATE TABLE process_samples (
    server_id         text             NOT NULL,
    ts                timestamptz      NOT NULL,
    pid               bigint           NOT NULL,
    start_time        timestamptz      NOT NULL,
    ppid              bigint,
    username          text,
    name              text             NOT NULL,
    command           text             NOT NULL DEFAULT '',
    state             text,
    cpu_seconds_total double precision,
    cpu_percent       real,
    memory_percent    real,
    rss_bytes         bigint,
    vsz_bytes         bigint,
    tty               text,
    session_name      text,
    session_id        integer,
    PRIMARY KEY (server_id, pid, start_time, ts)
) PARTITION BY RANGE (ts);
CREATE TABLE process_samples_default PARTITION OF process_samples DEFAULT;
CREATE INDEX process_samples_ts_brin ON process_samples USING brin (ts);
