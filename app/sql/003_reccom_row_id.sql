-- Provenance, version 3: a row's key is the server's own row_id, no longer the request id.
-- A client (or NGINX retrying the next upstream after a timeout) may send the same X-Request-Id to
-- two servers, which both answer: both answers are served requests, so both rows must be kept.
-- row_id (a fresh UUID per answer, set by the inference server) keeps replays of a spooled batch
-- idempotent; request_id stays as an indexed correlation id. Rows from before this file get
-- row_id = request_id, which is what a replay of a spool written before it will use too.
-- row_id may be NULL only for rows inserted by a server older than this file during an upgrade.

ALTER TABLE reccom
    ADD COLUMN row_id VARCHAR(64) NULL COMMENT 'unique per served answer; replays of a batch are ignored by it' AFTER id,
    ADD UNIQUE KEY uq_reccom_row (row_id),
    DROP INDEX uq_reccom_request,
    ADD KEY ix_reccom_request (request_id);

UPDATE reccom SET row_id = request_id WHERE row_id IS NULL;
