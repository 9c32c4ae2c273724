-- Training: rounds (a projection), model artifacts (content, by digest), task progress columns.
CREATE TABLE IF NOT EXISTS rounds (
    task_id      text        NOT NULL,
    round        int         NOT NULL,
    participants jsonb       NOT NULL,
    samples      jsonb       NOT NULL,
    metrics      jsonb       NOT NULL,
    eval_metrics jsonb       NOT NULL,
    model_sha256 text        NOT NULL,
    duration_s   double precision,
    recorded_at  timestamptz NOT NULL,
    PRIMARY KEY (task_id, round)
);

-- Model bytes live beside the log (content-addressed); the log records their digests.
CREATE TABLE IF NOT EXISTS artifacts (
    sha256     text PRIMARY KEY,
    task_id    text        NOT NULL,
    size       bigint      NOT NULL,
    content    bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS artifacts_task ON artifacts (task_id);

ALTER TABLE tasks ADD COLUMN IF NOT EXISTS rounds_completed int NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS model_sha256 text;
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS failure_reason text;

-- Which finished tasks have had their data-plane topics removed (retention).
CREATE TABLE IF NOT EXISTS topic_retention (
    task_id    text PRIMARY KEY,
    deleted_at timestamptz NOT NULL DEFAULT now()
);
