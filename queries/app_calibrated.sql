-- The app's `calibrated` mode (curate/app/): what `curate filter --calibrated` keeps, each
-- image with its calibrated top probability (calibration.sql's view calibrated_predictions,
-- fitted by `curate report`): its class's own threshold decides, not one min-prob. Made on
-- the app's read-only connection only when the workspace holds a calibration that applies to
-- the classification shown (curate/classify/calibrated.py check_applies).
-- Usage: SELECT * FROM app_calibrated LIMIT 5;
CREATE OR REPLACE TEMP VIEW app_calibrated AS
SELECT id, label, calibrated_prob AS prob, label2, prob2, margin
FROM calibrated_predictions
WHERE keep;
