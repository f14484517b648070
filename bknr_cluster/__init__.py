"""bknr_cluster: a replicated, in-memory prevalence datastore over libraft."""

__version__ = "0.1.0"
