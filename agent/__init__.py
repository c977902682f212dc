"""procfleet host agent: collectors, parsers, the report contract, sender and spool.

Importing this package must stay light: it never imports aiohttp, redis or asyncpg.
"""

__version__ = "0.1.0"
