-- Model artifacts are compressed with lz4, or not at all; never with pglz, the default.
--
-- Why: a model is mostly float32 weights, which neither method shrinks, but pglz gives up only
-- after working through most of the value when its first kilobyte compresses (a bundle's JSON
-- header does): storing a 40 MB model took 1.2 s instead of 0.4 s, all of it in the round that
-- uploads it. lz4 gives up as fast as storing it plainly does, and still halves an artifact that
-- is half zeros. A server built without lz4 (or older than PostgreSQL 14, which has no per-column
-- compression) stores the column uncompressed (EXTERNAL) instead. Rows stored before keep their
-- compression; each is read the same either way.
DO $$
BEGIN
    -- EXECUTE: an older server's syntax error is then raised here, where it is caught.
    EXECUTE 'ALTER TABLE artifacts ALTER COLUMN content SET COMPRESSION lz4';
EXCEPTION WHEN feature_not_supported OR syntax_error THEN
    ALTER TABLE artifacts ALTER COLUMN content SET STORAGE EXTERNAL;
END
$$;
