"""The read side: SQL views of the event log, the projector that keeps them, queries."""
