"""Cluster mode: replicas and writer failover on NATS JetStream (docs/design.md, "Cluster mode")."""
