-- A calibration belongs to the classification it was fitted on (calibration.sql): the
-- view calibrated_predictions is made in that classification's schema ("cls_NAME",
-- classification_schema.sql), where it reads that classification's predictions whatever
-- is active, and main's calibrated_predictions shows it. curate makes the one in the
-- schema (calibration.sql's statement `calibrated_predictions`, run with the schema
-- first on the search path), then `main`; `leave` takes the view out of the schema of a
-- classification the calibration no longer belongs to, and `forget` takes main's away
-- with the calibration (`curate classify --drop` of its classification).
-- To run it as it is, on a stand-in classification holding a copy of today's view:
-- Setup: CREATE SCHEMA "cls_NAME"; CREATE TABLE "cls_NAME".fitted AS FROM calibrated_predictions;
-- Setup: CREATE VIEW "cls_NAME".calibrated_predictions AS FROM "cls_NAME".fitted;

-- name: main
CREATE OR REPLACE VIEW main.calibrated_predictions AS SELECT * FROM "cls_NAME".calibrated_predictions;

-- name: leave
DROP VIEW IF EXISTS "cls_NAME".calibrated_predictions;

-- name: forget
DROP VIEW IF EXISTS main.calibrated_predictions;
