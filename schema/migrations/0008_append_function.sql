-- One round trip per append (api/store/postgres.py, PostgresSession.append).
--
-- Why: every writer waits for the append lock, so whatever happens while it is held bounds
-- the log's throughput. Done from Python, the head had to travel to the API and the inserts
-- back, with the API process's scheduling (its GIL, its other threads) in between. Here the
-- lock, the head, the hash chain and the inserts run in the server; the API sends this call,
-- the projections and the COMMIT in one pipeline and waits once.
--
-- The hash is the one `api.store.contract.canonical` defines: Python renders every part of
-- the canonical JSON it can before the lock (p_heads: up to "position":, p_middles: from
-- "recorded_at" up to "version":), and only the position and the version, known here, are
-- spliced in. Verification (walk_chain) recomputes it in Python from the stored columns.
CREATE OR REPLACE FUNCTION musketeer_append(
    p_stream_id text, p_expected int, p_types text[], p_data jsonb[], p_metadata jsonb[],
    p_recorded_at timestamptz[], p_heads text[], p_middles text[])
RETURNS TABLE (out_position bigint, out_hash bytea)
LANGUAGE plpgsql AS $$
DECLARE
    v_version int;
    v_position bigint;
    v_prev bytea;
    v_hash bytea;
BEGIN
    -- Held to the commit: positions follow commit order and chain on the last committed hash.
    LOCK TABLE events IN EXCLUSIVE MODE;
    SELECT coalesce(max(e.version), 0) INTO v_version FROM events e WHERE e.stream_id = p_stream_id;
    IF p_expected <> -1 AND v_version <> p_expected THEN
        RAISE EXCEPTION 'stream ''%'' is at version %, expected %', p_stream_id, v_version, p_expected
            USING ERRCODE = 'MU409',
                  DETAIL = json_build_object('stream_id', p_stream_id, 'current', v_version,
                                             'expected', p_expected)::text;
    END IF;
    SELECT e.position, e.hash INTO v_position, v_prev FROM events e ORDER BY e.position DESC LIMIT 1;
    v_position := coalesce(v_position, 0);
    v_prev := coalesce(v_prev, decode(repeat('00', 32), 'hex'));
    FOR i IN 1 .. coalesce(array_length(p_types, 1), 0) LOOP
        v_position := v_position + 1;
        v_version := v_version + 1;
        v_hash := sha256(v_prev || convert_to(
            p_heads[i] || v_position::text || p_middles[i] || v_version::text || '}', 'UTF8'));
        INSERT INTO events (position, stream_id, version, type, data, metadata, recorded_at,
                            prev_hash, hash)
        VALUES (v_position, p_stream_id, v_version, p_types[i], p_data[i], p_metadata[i],
                p_recorded_at[i], v_prev, v_hash);
        out_position := v_position;
        out_hash := v_hash;
        RETURN NEXT;
        v_prev := v_hash;
    END LOOP;
END
$$;
