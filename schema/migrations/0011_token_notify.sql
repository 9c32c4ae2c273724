-- Tell every API process when a bearer token stops being valid before its time.
--
-- Why: each API process keeps the tokens it has checked in memory (api/security.py, TokenCache),
-- so a request does not wait on PostgreSQL for its token. A token leaves this table when its
-- user signs out, when an operator deletes it (or empties the table) by hand, and when logins
-- sweep out long-expired ones. Each of these must reach every process's memory, whoever did
-- it, so the table says so itself: the digest of every row deleted or changed goes out on the
-- channel `musketeer_tokens`, and '*' when the table is emptied. PostgreSQL sends a NOTIFY when
-- the transaction commits, never for one that rolls back.
CREATE OR REPLACE FUNCTION musketeer_token_gone() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify('musketeer_tokens', '*');
    ELSE
        PERFORM pg_notify('musketeer_tokens', encode(OLD.token_sha256, 'hex'));
    END IF;
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS access_tokens_gone ON access_tokens;
CREATE TRIGGER access_tokens_gone AFTER DELETE OR UPDATE ON access_tokens
    FOR EACH ROW EXECUTE FUNCTION musketeer_token_gone();
DROP TRIGGER IF EXISTS access_tokens_emptied ON access_tokens;
CREATE TRIGGER access_tokens_emptied AFTER TRUNCATE ON access_tokens
    FOR EACH STATEMENT EXECUTE FUNCTION musketeer_token_gone();
