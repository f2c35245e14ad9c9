-- The study's Table 2, from the marks of one review set (relation `report_marks`:
-- label, prob, mark, frequency, rank): per class, its frequency in the whole collection
-- (top-1 predictions, no threshold; NULL for a CSV sheet, which does not carry it), the
-- images sampled, hits, misses, skipped, not yet marked, the accuracy hits / (hits +
-- misses), and the mean top probability of its hits and of its misses.
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
FROM report_marks
GROUP BY label
ORDER BY min(rank), label;
