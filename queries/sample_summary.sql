-- The whole sample at a glance (relation `report_marks`): counts of marks, the accuracy
-- of the top-1 label (hits / judged), and the study's mean top probability of hits
-- against misses (0.6579 against 0.5676 in the study).
SELECT count(*) AS sampled,
       count(*) FILTER (mark = 'hit') AS hits,
       count(*) FILTER (mark = 'miss') AS misses,
       count(*) FILTER (mark = 'skip') AS skipped,
       count(*) FILTER (mark IS NULL) AS unmarked,
       count(*) FILTER (mark = 'hit') / nullif(count(*) FILTER (mark IN ('hit', 'miss')), 0) AS accuracy,
       avg(prob) FILTER (mark = 'hit') AS mean_prob_hits,
       avg(prob) FILTER (mark = 'miss') AS mean_prob_misses
FROM report_marks;
