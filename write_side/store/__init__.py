"""The machinery behind the event store: how saves share transactions, how the
PostgreSQL pool is tuned, where a stream's events landed in the log, how a Task is
encoded. Nothing here decides anything about tasks."""
