"""The bank example: accounts and exactly-once transfers."""
