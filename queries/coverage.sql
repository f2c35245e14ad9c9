-- The study's Table 1, the one definition of it (`curate report` reads it too).
--
-- coverage_of(predictions): for t = 0.0, 0.1, ..., 1.0, how many rows of the relation
-- named `predictions` (any relation with a `prob` column: predictions,
-- caption_predictions, ensemble) have prob >= t, out of all its rows. t is range/10,
-- the same DOUBLE as the literal 0.3, so a probability of exactly 0.3 counts at 0.3.
-- Usage: SELECT * FROM coverage_of('ensemble');
CREATE OR REPLACE MACRO coverage_of(predictions) AS TABLE
SELECT t.threshold,
       count(p.prob) FILTER (p.prob >= t.threshold) AS classified,
       count(p.prob) AS images,
       count(p.prob) FILTER (p.prob >= t.threshold) / nullif(count(p.prob), 0) AS share
FROM (SELECT i / 10 AS threshold FROM range(0, 11) r(i)) t
LEFT JOIN (SELECT prob FROM query_table(predictions)) p ON true
GROUP BY t.threshold
ORDER BY t.threshold;

-- Table 1 of the image predictions, as the study gives it.
CREATE OR REPLACE VIEW coverage AS
SELECT * FROM coverage_of('predictions');
