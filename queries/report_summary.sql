-- The whole sample at a glance (relation `marks`): counts of marks, the accuracy
-- of the top-1 label (hits / judged), and the study's mean top probability of hits
-- against misses (0.6579 against 0.5676 in the study).
-- `marks` names a relation with columns label, prob, mark (hit | miss | skip | NULL),
-- frequency and rank (the class's order): `curate report` fills a TEMP table with the
-- marks of a set or of a CSV sheet; in the shell, the view review_marks (sample_schema.sql)
-- has every set's:
-- Setup: CREATE OR REPLACE TEMP VIEW report_marks AS SELECT * FROM review_marks WHERE set_name = (SELECT name FROM review_sets ORDER BY created_at DESC LIMIT 1);
-- Usage: SELECT * FROM report_summary('report_marks');
CREATE OR REPLACE TEMP MACRO report_summary(marks) AS TABLE
SELECT count(*) AS sampled,
       count(*) FILTER (mark = 'hit') AS hits,
       count(*) FILTER (mark = 'miss') AS misses,
       count(*) FILTER (mark = 'skip') AS skipped,
       count(*) FILTER (mark IS NULL) AS unmarked,
       count(*) FILTER (mark = 'hit') / nullif(count(*) FILTER (mark IN ('hit', 'miss')), 0) AS accuracy,
       avg(prob) FILTER (mark = 'hit') AS mean_prob_hits,
       avg(prob) FILTER (mark = 'miss') AS mean_prob_misses
FROM query_table(marks);
