"""The MCP server: the query API as tools for LLM clients (Model Context Protocol).

    api.py     the ``QueryApi`` the tools call, ``ApiError``, and ``InProcessApi`` (the
               gateway's own query functions, for ``/mcp``)
    tools.py   the tools (typed, bounded arguments; answers = the API's JSON + units)
    asgi.py    a minimal ASGI-over-aiohttp bridge for the SDK's streamable HTTP transport
    route.py   ``POST /mcp`` on the gateway, behind a ``read`` token

``procfleet mcp`` (procfleet/commands/mcp.py) serves the same tools over stdio with an HTTP
``QueryApi`` (httpx, ``PROCFLEET_GATEWAY_URL`` / ``PROCFLEET_TOKEN``). ``tools`` is the
contract: both transports serve exactly what ``build_server`` returns.
"""
