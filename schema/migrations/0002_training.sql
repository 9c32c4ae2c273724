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
-- Keyed by task too: two tasks may well produce byte-identical models.
CREATE TABLE IF NOT EXISTS artifacts (
    task_id    text        NOT NULL,
    sha256     text        NOT NULL,
    size       bigint      NOT NULL,
    content    bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (task_id, sha256)
);

ALTER TABLE tasks ADD COLUMN IF NOT EXISTS rounds_completed int NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS model_sha256 text;
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS failure_reason text;

-- Which finished tasks have had their data-plane topics removed (retention).
CREATE TABLE IF NOT EXISTS topic_retention (
    task_id    text PRIMARY KEY,
    deleted_at timestamptz NOT NULL DEFAULT now()
);

-- When the platform last heard from each participant (an update counted in a round).
ALTER TABLE memberships ADD COLUMN IF NOT EXISTS last_contact_at timestamptz;
