-- Differential privacy spent: per round (after it), and on the task (its latest).
ALTER TABLE rounds ADD COLUMN IF NOT EXISTS epsilon double precision;
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS epsilon double precision;
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS completion_reason text;
