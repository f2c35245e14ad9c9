-- The subset `curate filter --calibrated` writes, from the view calibrated_predictions
-- (calibration.sql; `curate report` fits the calibration on the review marks): each
-- image's calibrated top probability against its label's own threshold (the one that
-- reaches the target precision on the marks). A label without a threshold keeps
-- nothing. wanted: labels (an empty list: any label); unmatched: true for the images
-- whose calibrated top label stays under its threshold (what cleaning drops).
-- Usage: SELECT * FROM subset_calibrated([], false);
CREATE OR REPLACE TEMP MACRO subset_calibrated(wanted, unmatched) AS TABLE
SELECT k.id, i.path, i.caption, k.label, k.calibrated_prob AS prob, k.class_threshold,
       x.* EXCLUDE (id)
FROM calibrated_predictions k
JOIN items i ON i.id = k.id
JOIN item_extras x ON x.id = k.id
WHERE CASE WHEN unmatched THEN NOT k.keep
           ELSE k.keep AND (len(wanted) = 0 OR list_contains(wanted, k.label)) END
ORDER BY k.id;
