-- The study's Table 2, from the marks of one review set (relation `marks`): per class,
-- its frequency in the whole collection (top-1 predictions, no threshold; NULL for a CSV sheet, which does not carry it), the
-- images sampled, hits, misses, skipped, not yet marked, the accuracy hits / (hits +
-- misses), and the mean top probability of its hits and of its misses.
-- `marks` names a relation with columns label, prob, mark (hit | miss | skip | NULL),
-- frequency and rank (the class's order): `curate report` fills a TEMP table with the
-- marks of a set or of a CSV sheet; in the shell, the view review_marks (sample_schema.sql)
-- has every set's:
-- Setup: CREATE OR REPLACE TEMP VIEW report_marks AS SELECT * FROM review_marks WHERE set_name = (SELECT name FROM review_sets ORDER BY created_at DESC LIMIT 1);
-- Usage: SELECT * FROM report_class_accuracy('report_marks');
CREATE OR REPLACE TEMP MACRO report_class_accuracy(marks) AS TABLE
SELECT label AS class,
       any_value(frequency) AS frequency,
       count(*) AS sampled,
       count(*) FILTER (mark = 'hit') AS hits,
       count(*) FILTER (mark = 'miss') AS misses,
       count(*) FILTER (mark = 'skip') AS skipped,
       count(*) FILTER (mark IS NULL) AS unmarked,
       count(*) FILTER (mark = 'hit') / nullif(count(*) FILTER (mark IN ('hit', 'miss')), 0) AS accuracy,
       avg(prob) FILTER (mark = 'hit') AS mean_prob_hits,
       avg(prob) FILTER (mark = 'miss') AS mean_prob_misses
FROM query_table(marks)
GROUP BY label
ORDER BY min(rank), label;
