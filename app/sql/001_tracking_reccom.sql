-- Provenance, version 1: what each model version is made of, and which version served which request.
-- Applied once by auto_deployment/schema.py (recorded in schema_version); IF NOT EXISTS keeps a re-run
-- after a half-applied file harmless, since MySQL DDL is not transactional.
-- Times: DATETIME columns hold UTC; served_at_ms is milliseconds since the Unix epoch.

-- One row per model version (written by the versioning stage, upserted on re-record).
CREATE TABLE IF NOT EXISTS tracking (
    version_number  INT UNSIGNED     NOT NULL PRIMARY KEY,
    data_creation   DATETIME(3)      NULL COMMENT 'when the training data was assembled (UTC)',
    trained_on      DATETIME(3)      NULL COMMENT 'when the model was trained (UTC)',
    model_rmse      DOUBLE           NULL COMMENT 'offline RMSE on the 80/20 split',
    data_checksum   VARCHAR(128)     NULL,
    model_checksum  VARCHAR(128)     NULL,
    code_commit     VARCHAR(64)      NULL,
    algorithm       VARCHAR(255)     NULL,
    params          JSON             NULL,
    train_size      BIGINT UNSIGNED  NULL COMMENT 'ratings in the training set',
    metrics         JSON             NULL COMMENT 'every offline metric of the evaluation',
    recorded_at     TIMESTAMP(3)     NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- One row per served /recommend request (written in batches by the inference servers' app account).
-- id follows insertion order; request_id is unique so a replayed batch (INSERT IGNORE) never duplicates.
-- No foreign key to tracking: a served row must never be refused, whatever the order of arrival.
CREATE TABLE IF NOT EXISTS reccom (
    id              BIGINT UNSIGNED  NOT NULL AUTO_INCREMENT PRIMARY KEY,
    request_id      VARCHAR(64)      NOT NULL,
    served_at_ms    BIGINT           NOT NULL COMMENT 'ms since the epoch (UTC)',
    user_id         BIGINT           NOT NULL,
    version_number  INT UNSIGNED     NOT NULL,
    slot            VARCHAR(32)      NOT NULL,
    host            VARCHAR(255)     NOT NULL,
    latency_ms      FLOAT            NULL,
    movies          TEXT             NOT NULL COMMENT 'the returned list, comma-joined, best first',
    UNIQUE KEY uq_reccom_request (request_id),
    KEY ix_reccom_user_time (user_id, served_at_ms),
    KEY ix_reccom_version_time (version_number, served_at_ms)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
