"""Test helpers importable from any test folder (``from tests.support.redis_cluster import
LocalCluster``): servers the fixtures start, and what drives them."""
