-- Collection-wide estimates from a review set (curate/validate/collection.py).
--
-- report_collection: per class of the set and threshold t = 0.0 .. 1.0, the images of the
-- collection (`predictions`: the set's kind of prediction, restricted to the set's --where
-- scope) predicted as that class with top probability >= t, and the set's judged marks
-- among them: the weights and the marks of the stratified precision of what t keeps.
-- t is range/10, the same DOUBLE as in report_thresholds.sql.
-- Usage: SELECT * FROM report_collection('predictions', 'image-top10x100-seed0');
CREATE OR REPLACE TEMP MACRO report_collection(predictions, review_set) AS TABLE
WITH thresholds AS (
    SELECT range / 10 AS threshold FROM range(0, 11)
),
images AS (
    SELECT c.label, t.threshold, count(p.id) AS images
    FROM review_classes c
    CROSS JOIN thresholds t
    LEFT JOIN query_table(predictions) p ON p.label = c.label AND p.prob >= t.threshold
    WHERE c.set_name = review_set
    GROUP BY c.label, t.threshold
),
judged AS (
    SELECT t.threshold, m.label,
           count(m.id) AS marks,
           count(m.id) FILTER (m.mark = 'hit') AS hits
    FROM thresholds t
    JOIN review_marks m ON m.set_name = review_set AND m.mark IN ('hit', 'miss') AND m.prob >= t.threshold
    GROUP BY t.threshold, m.label
)
SELECT i.label, i.threshold, i.images, coalesce(j.marks, 0) AS marks, coalesce(j.hits, 0) AS hits
FROM images i
LEFT JOIN judged j USING (label, threshold)
ORDER BY i.threshold, i.label;

-- subset_marks: for a subset written by `curate filter` (the relation `kept`: id, label),
-- per label, the images it keeps and the judged marks of the review set that fall among
-- them. The set's marks of a class are a random sample of the class, so the ones inside
-- the subset are a random sample of the subset's images of that class (whatever rule cut
-- it: threshold, --where, --dedup, --calibrated). Only marks of the set's own images
-- count: a mark on any other image was not drawn at random and never enters.
-- Setup: CREATE OR REPLACE TEMP TABLE kept AS SELECT id, label FROM predictions WHERE prob >= 0.5;
-- Usage: SELECT * FROM subset_marks('kept', 'image-top10x100-seed0');
CREATE OR REPLACE TEMP MACRO subset_marks(kept, review_set) AS TABLE
WITH k AS (
    SELECT id, label FROM query_table(kept)
)
SELECT c.label,
       (SELECT count(*) FROM k WHERE k.label = c.label) AS images,
       count(m.id) AS marks,
       count(m.id) FILTER (m.mark = 'hit') AS hits
FROM review_classes c
LEFT JOIN (SELECT r.id, r.label, j.mark
           FROM review_items r
           JOIN judgments j ON j.id = r.id AND j.label = r.label AND j.mark IN ('hit', 'miss')
           WHERE r.set_name = review_set) m
    ON m.label = c.label AND EXISTS (SELECT 1 FROM k WHERE k.id = m.id AND k.label = m.label)
WHERE c.set_name = review_set
GROUP BY c.label
ORDER BY c.label;
