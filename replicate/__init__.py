"""Replication: changed-block streams between containers (send / receive)."""
