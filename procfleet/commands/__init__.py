"""One module per ``procfleet`` subcommand: ``add_arguments(parser)`` and ``run(args) -> int``.

These modules import only the standard library at the top; the package that does the work is
imported inside ``run``.
"""
