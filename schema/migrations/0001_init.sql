-- Event store, projections, idempotency, credentials and tokens.
CREATE TABLE IF NOT EXISTS events (
    position     bigint PRIMARY KEY,
    stream_id    text        NOT NULL,
    version      int         NOT NULL,
    type         text        NOT NULL,
    data         jsonb       NOT NULL,
    metadata     jsonb       NOT NULL,
    recorded_at  timestamptz NOT NULL,
    prev_hash    bytea       NOT NULL,
    hash         bytea       NOT NULL,
    UNIQUE (stream_id, version)
);

CREATE TABLE IF NOT EXISTS idempotency_keys (
    actor        text        NOT NULL,
    key          text        NOT NULL,
    request_hash text        NOT NULL,
    status_code  int         NOT NULL,
    response     jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (actor, key)
);

-- Credentials are secrets, not facts: they live beside the log, never in it.
CREATE TABLE IF NOT EXISTS credentials (
    username      text PRIMARY KEY,
    password_hash text NOT NULL
);

CREATE TABLE IF NOT EXISTS access_tokens (
    token_sha256 bytea PRIMARY KEY,
    username     text        NOT NULL,
    expires_at   timestamptz NOT NULL
);

CREATE TABLE IF NOT EXISTS relay_state (
    name     text PRIMARY KEY,
    position bigint NOT NULL
);

-- Projections: rebuilt from the log at will.
CREATE TABLE IF NOT EXISTS users (
    username      text PRIMARY KEY,
    organization  text        NOT NULL,
    created_at    timestamptz NOT NULL,
    position      bigint      NOT NULL
);

CREATE TABLE IF NOT EXISTS tasks (
    task_id          text PRIMARY KEY,
    name             text        NOT NULL UNIQUE,
    creator          text        NOT NULL,
    status           text        NOT NULL,
    definition       jsonb       NOT NULL,
    topology         text        NOT NULL,
    pom              int         NOT NULL,
    description      text,
    quorum           int         NOT NULL,
    max_participants int,
    broadcast_topic  text        NOT NULL,
    updates_topic    text        NOT NULL,
    participant_count int        NOT NULL,
    version          int         NOT NULL,
    created_position bigint      NOT NULL,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_created_position ON tasks (created_position DESC);

CREATE TABLE IF NOT EXISTS memberships (
    task_id      text        NOT NULL,
    username     text        NOT NULL,
    organization text        NOT NULL,
    joined_at    timestamptz NOT NULL,
    PRIMARY KEY (task_id, username)
);
CREATE INDEX IF NOT EXISTS memberships_username ON memberships (username);
