"""bknrctl: the operator CLI of bknr_cluster.

It drives nodes only through their HTTP API and the ``bknr-node`` command line (locally or
over SSH); it never embeds an engine.
"""

__version__ = "0.1.0"
