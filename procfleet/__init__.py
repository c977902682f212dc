"""The ``procfleet`` command and the all-in-one local stack."""
