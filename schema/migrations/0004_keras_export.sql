-- The final model's .keras export (what users download), named by TaskCompleted beside the bundle.
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS keras_sha256 text;
