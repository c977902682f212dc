"""procfleet host agent: collectors, parsers, the report contract, sender and spool.

Importing this package must stay light: it never imports aiohttp, redis or asyncpg. The
report contract is ``contract`` (pydantic, the one definition the gateway validates against);
a running agent builds ``rows`` instead, light records checked by ``contract_spec`` (generated
from ``contract`` by ``contract_spec_gen``), and never imports pydantic.
"""

__version__ = "0.1.0"
