"""`procfleet export`: samples and rollups from PostgreSQL to typed Parquet / CSV files.

    sources.py  per source: its columns (name, type, unit) and the one SQL function that
                reads it (retarget a source by editing that function only)
    files.py    the output files: Parquet / CSV sinks over pyarrow, names per day, atomic
    run.py      the stream: day by day through a server-side cursor, batches into row groups,
                progress on a terminal; bounded memory whatever the window

The command (procfleet/commands/export.py) parses and checks the arguments and calls
``run.export``. Errors: ``ExportError`` (a ``ProcfleetError``) names the field and value.
"""
