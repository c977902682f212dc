"""Numbered SQL files (``NNNN_name.sql``), the single source of the schema, and their runner
(``migrations.runner``)."""
