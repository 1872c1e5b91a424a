-- Provenance, version 2: one row per canary release (written by the release controller, admin account).
-- "stable_*" are the same figures measured on the stable replicas over the same window, for comparison.

CREATE TABLE IF NOT EXISTS releases (
    id                  BIGINT UNSIGNED  NOT NULL AUTO_INCREMENT PRIMARY KEY,
    candidate_version   INT UNSIGNED     NOT NULL,
    previous_version    INT UNSIGNED     NULL,
    started_at          DATETIME(3)      NOT NULL COMMENT 'UTC',
    ended_at            DATETIME(3)      NULL COMMENT 'UTC',
    outcome             ENUM('promoted', 'aborted', 'failed') NOT NULL,
    canary_latency_ms   DOUBLE           NULL COMMENT 'average latency of successful /recommend over the window',
    canary_requests     BIGINT           NULL,
    canary_errors       BIGINT           NULL,
    canary_error_ratio  DOUBLE           NULL,
    stable_latency_ms   DOUBLE           NULL,
    stable_requests     BIGINT           NULL,
    stable_errors       BIGINT           NULL,
    stable_error_ratio  DOUBLE           NULL,
    reason              TEXT             NULL,
    KEY ix_releases_candidate (candidate_version),
    KEY ix_releases_started (started_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
