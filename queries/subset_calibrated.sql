-- The subset `curate filter --calibrated` writes, from the view calibrated_predictions
-- (calibration.sql; `curate report` fits the calibration on the review marks): each
-- image's calibrated top probability against its label's own threshold (the one that
-- reaches the target precision on the marks). A label without a threshold keeps
-- nothing. wanted: labels (an empty list: any label); unmatched: true for the images
-- whose calibrated top label stays under its threshold (what cleaning drops).
-- calibrated_selection: the same rows as predictions (with each one's runner-up), the one
-- evaluation `curate filter --calibrated` makes; subset_calibrated: them as written out.
-- Usage: SELECT * FROM subset_calibrated([], false);
CREATE OR REPLACE TEMP MACRO calibrated_selection(wanted, unmatched) AS TABLE
SELECT id, label, calibrated_prob AS prob, class_threshold, label2, prob2
FROM calibrated_predictions
WHERE CASE WHEN unmatched THEN NOT keep
           ELSE keep AND (len(wanted) = 0 OR list_contains(wanted, label)) END;

CREATE OR REPLACE TEMP MACRO subset_calibrated(wanted, unmatched) AS TABLE
SELECT k.id, i.path, i.caption, k.label, k.prob, k.class_threshold,
       x.* EXCLUDE (id)
FROM calibrated_selection(wanted, unmatched) k
JOIN items i ON i.id = k.id
JOIN item_extras x ON x.id = k.id
ORDER BY k.id;
