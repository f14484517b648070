"""Example applications built on the bknr_cluster store."""
