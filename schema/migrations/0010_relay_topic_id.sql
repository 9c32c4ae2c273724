-- The id of the topic the relay's stored position was published to.
--
-- Why: a broker that restarts without its data creates the events topic again under the same
-- name, and a batch the relay had on its way may land there. The topic then holds messages, so
-- "is it empty?" passes it for complete, and its end offset says little (some brokers report
-- the last batch's first offset). Its id does not pass: a topic created again gets a new one.
-- NULL for a position stored before this column, or when nothing is published yet.
ALTER TABLE relay_state ADD COLUMN IF NOT EXISTS topic_id text;
