-- Prediction-powered estimates (curate/validate/ppi.py): per class of a review set, its
-- images in the collection with their calibrated probability (calibration.sql's macro
-- calibrated_probs with the fit's 1 / T, source, label count and scores column), and the
-- set's judged marks of it with the calibrated probability of each marked image. Only
-- the set's own images' marks (review_items): a random sample of the class.
-- Usage: SELECT * FROM report_ppi(1 / 1.5, 'image', 205, 'image_prob', 'image-top10x100-seed0');
CREATE OR REPLACE TEMP MACRO report_ppi(inv_t, fit_source, n_labels, scores_col, review_set) AS TABLE
WITH c AS (
    SELECT id, label, calibrated_prob FROM calibrated_probs(inv_t, fit_source, n_labels, scores_col)
),
marked AS (
    SELECT r.label, (j.mark = 'hit')::DOUBLE AS y, c.calibrated_prob AS f, r.position
    FROM review_items r
    JOIN judgments j ON j.id = r.id AND j.label = r.label AND j.mark IN ('hit', 'miss')
    JOIN c ON c.id = r.id AND c.label = r.label
    WHERE r.set_name = review_set
)
SELECT k.label,
       count(c.id) AS images,
       list(c.calibrated_prob ORDER BY c.id) AS f_all,
       (SELECT list(m.y ORDER BY m.position) FROM marked m WHERE m.label = k.label) AS y,
       (SELECT list(m.f ORDER BY m.position) FROM marked m WHERE m.label = k.label) AS f_marked
FROM review_classes k
JOIN c ON c.label = k.label
WHERE k.set_name = review_set
GROUP BY k.label, k.rank
ORDER BY k.rank;
