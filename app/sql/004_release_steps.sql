-- Provenance, version 4 (issue 11): a release's progressive steps and the people who steered it.
-- steps:      JSON list, one object per traffic step reached (name, canary share, shadow, start and end, the
--             last verdict and each check's value and limit), so an abort names the step and the numbers;
-- decided_by: who took the decision by hand (`release --abort` / `--promote-now`); NULL when the checks did;
-- controls:   JSON list of every manual control (pause, resume, abort, promote-now) with who, why and when.
-- One ALTER (atomic in MySQL 8; the compose database), no IF NOT EXISTS (MariaDB-only syntax), as in 003.

ALTER TABLE releases
    ADD COLUMN steps      TEXT         NULL COMMENT 'JSON: each step reached and its checks',
    ADD COLUMN decided_by VARCHAR(128) NULL COMMENT 'who decided by hand; NULL = the checks',
    ADD COLUMN controls   TEXT         NULL COMMENT 'JSON: manual controls with who/why/when';
