-- Members' signing keys (a projection of MemberKeyRegistered and MemberKeyRevoked): which key
-- speaks for whom. A key's status is active (the user's current key), rotated (replaced by a
-- newer key; still believed for tasks that recorded it at their start) or revoked.
CREATE TABLE IF NOT EXISTS member_keys (
    fingerprint   text PRIMARY KEY,
    username      text        NOT NULL,
    public_key    text        NOT NULL,
    status        text        NOT NULL,
    registered_at timestamptz NOT NULL,
    revoked_at    timestamptz
);
CREATE INDEX IF NOT EXISTS member_keys_username ON member_keys (username);

-- The fingerprint of each member's key as TaskStarted recorded it.
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS keys jsonb NOT NULL DEFAULT '{}';
