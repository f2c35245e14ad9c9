-- The study's threshold table, from the marks of one review set.
--
-- Reads the relation `marks`: the review sheet of a set,
-- or a CSV sheet loaded by `curate report --marks`. For t = 0.0, 0.1, ..., 1.0:
--   kept       images whose top probability is >= t
--   hits       hits among them;   hit_rate   = hits kept / all hits in the sample
--   errors     misses among them; error_rate = errors kept / all errors in the sample
--   ratio      hit_rate / error_rate (NULL where no error is kept: 0/0 at t = 1.0)
--   precision  hits kept / kept (the accuracy of what the threshold keeps; Table 3)
-- Skipped and unmarked images count nowhere. t is range/10, the same DOUBLE as the
-- literal 0.3, so an image at exactly 0.3 is kept at 0.3.
-- `marks` names a relation with columns label, prob, mark (hit | miss | skip | NULL),
-- frequency and rank (the class's order): `curate report` fills a TEMP table with the
-- marks of a set or of a CSV sheet; in the shell, the view review_marks (sample_schema.sql)
-- has every set's:
-- Setup: CREATE OR REPLACE TEMP VIEW report_marks AS SELECT * FROM review_marks WHERE set_name = (SELECT name FROM review_sets ORDER BY created_at DESC LIMIT 1);
-- Usage: SELECT * FROM report_thresholds('report_marks');
CREATE OR REPLACE TEMP MACRO report_thresholds(marks) AS TABLE
WITH thresholds AS (
    SELECT range / 10 AS threshold FROM range(0, 11)
),
judged AS (
    SELECT prob, mark = 'hit' AS hit FROM query_table(marks) WHERE mark IN ('hit', 'miss')
),
totals AS (
    SELECT count(*) FILTER (hit) AS all_hits, count(*) FILTER (NOT hit) AS all_errors FROM judged
),
kept AS (
    SELECT t.threshold,
           count(j.prob) AS kept,
           count(j.prob) FILTER (j.hit) AS hits,
           count(j.prob) FILTER (NOT j.hit) AS errors
    FROM thresholds t
    LEFT JOIN judged j ON j.prob >= t.threshold
    GROUP BY t.threshold
)
SELECT threshold,
       kept,
       hits,
       hits / nullif(all_hits, 0) AS hit_rate,
       errors,
       errors / nullif(all_errors, 0) AS error_rate,
       (hits / nullif(all_hits, 0)) / nullif(errors / nullif(all_errors, 0), 0) AS ratio,
       hits / nullif(kept, 0) AS precision
FROM kept, totals
ORDER BY threshold;
