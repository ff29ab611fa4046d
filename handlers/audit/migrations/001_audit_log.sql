-- The audit log: one row per task event, keyed by the event id so that a redelivered or
-- replayed event inserts nothing new. Portable between SQLite and PostgreSQL.
CREATE TABLE IF NOT EXISTS audit_log (
    event_id         TEXT PRIMARY KEY,
    event_type       TEXT NOT NULL,
    task_id          TEXT NOT NULL,
    user_id          TEXT NOT NULL,
    occurred_at      TEXT NOT NULL,      -- RFC 3339, UTC
    summary          TEXT NOT NULL,
    task             TEXT NOT NULL,      -- the task as JSON
    source_topic     TEXT NOT NULL,
    source_partition INTEGER NOT NULL,
    source_offset    BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_log_task ON audit_log (task_id, occurred_at);
