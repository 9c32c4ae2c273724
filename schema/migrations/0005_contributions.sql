-- Contributions: what each participant's update was worth to a round (a projection of
-- ContributionsAssessed events; rebuilt from the log like the others).
CREATE TABLE IF NOT EXISTS contributions (
    task_id      text             NOT NULL,
    round        int              NOT NULL,
    method       text             NOT NULL,
    metric       text             NOT NULL,
    contributions jsonb           NOT NULL,
    baseline     double precision NOT NULL,
    total        double precision NOT NULL,
    data         text             NOT NULL,
    permutations int,
    recorded_at  timestamptz      NOT NULL,
    PRIMARY KEY (task_id, round)
);
