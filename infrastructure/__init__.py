"""Database plumbing that both sides share and that knows nothing of tasks: checking a
pooled PostgreSQL connection, a LISTEN loop, and leadership locks for the projector."""
