-- Classifications side by side (`curate compare`): the study's comparisons, e.g. raw
-- label names against natural prompts, over the same images.
--
-- Each takes classification names (as `curate classify --list` shows them) and the
-- view to compare: 'predictions' (by the image), 'caption_predictions' or 'ensemble'.
-- A classification NAME keeps its tables and views in the schema "cls_NAME".
-- Coverage (the study's Table 1) of one of them is coverage_of('"cls_NAME".predictions').
-- They are TEMP macros (read-only connections can make them): `.read queries/compare.sql`
-- in the shell, then e.g.
-- Usage: SELECT * FROM agreement_of('places205-natural', 'places205-natural', 'predictions');
-- Usage: SELECT * FROM label_changes_of('places205-natural', 'places205-natural', 'predictions');
-- Usage: SELECT * FROM classified_per_label_of('places205-natural', 'predictions');
-- Usage: SELECT * FROM marked_hits_of('places205-natural', 'predictions');

-- How often two classifications give an image the same top label (compared by name,
-- so label sets may differ): over every image both predict, and over those both
-- classify at min_prob.
CREATE OR REPLACE TEMP MACRO agreement_of(a, b, view, min_prob := 0.5) AS TABLE
SELECT count(*) AS images,
       count(*) FILTER (x.label = y.label) AS same_top,
       count(*) FILTER (x.label = y.label) / nullif(count(*), 0) AS share_same,
       count(*) FILTER (x.prob >= min_prob AND y.prob >= min_prob) AS both_classified,
       count(*) FILTER (x.prob >= min_prob AND y.prob >= min_prob AND x.label = y.label) AS same_top_classified,
       count(*) FILTER (x.prob >= min_prob AND y.prob >= min_prob AND x.label = y.label)
           / nullif(count(*) FILTER (x.prob >= min_prob AND y.prob >= min_prob), 0) AS share_same_classified
FROM query_table('"cls_' || a || '".' || view) x
JOIN query_table('"cls_' || b || '".' || view) y ON x.id = y.id;

-- The label changes between two classifications, most frequent first.
CREATE OR REPLACE TEMP MACRO label_changes_of(a, b, view) AS TABLE
SELECT x.label AS from_label, y.label AS to_label, count(*) AS images
FROM query_table('"cls_' || a || '".' || view) x
JOIN query_table('"cls_' || b || '".' || view) y ON x.id = y.id
WHERE x.label <> y.label
GROUP BY ALL
ORDER BY images DESC, from_label, to_label;

-- Per label of the classification's label set: the images whose top label it is with a
-- probability of at least min_prob (0 for a label no image reaches).
CREATE OR REPLACE TEMP MACRO classified_per_label_of(name, view, min_prob := 0.5) AS TABLE
SELECT l.label_idx, l.label, count(p.id) AS images
FROM query_table('"cls_' || name || '".labels') l
LEFT JOIN (SELECT id, label FROM query_table('"cls_' || name || '".' || view) WHERE prob >= min_prob) p
       ON p.label = l.label
GROUP BY ALL
ORDER BY l.label_idx;

-- The marks (curate review) on the pairs (image, label) this classification predicts:
-- a mark judges a pair, so it counts for every classification that predicts that pair.
-- Skipped pairs count nowhere.
CREATE OR REPLACE TEMP MACRO marked_hits_of(name, view, min_prob := 0.0) AS TABLE
SELECT count(*) AS marked,
       count(*) FILTER (j.mark = 'hit') AS hits,
       count(*) FILTER (j.mark = 'miss') AS misses,
       count(*) FILTER (j.mark = 'hit') / nullif(count(*), 0) AS hit_rate
FROM query_table('"cls_' || name || '".' || view) p
JOIN judgments j ON j.id = p.id AND j.label = p.label
WHERE j.mark IN ('hit', 'miss') AND p.prob >= min_prob;

-- Per label of classification a: of the images a gives that top label, how many b gives
-- the same one (the app's compare view: where two classifications part ways).
CREATE OR REPLACE TEMP MACRO agreement_per_label_of(a, b, view) AS TABLE
SELECT x.label, count(*) AS images,
       count(*) FILTER (x.label = y.label) AS same_top,
       count(*) FILTER (x.label = y.label) / count(*) AS share_same
FROM query_table('"cls_' || a || '".' || view) x
JOIN query_table('"cls_' || b || '".' || view) y ON x.id = y.id
GROUP BY x.label
ORDER BY images DESC, x.label;

-- The images two classifications give different top labels, the most confident
-- disagreements first (both sure, yet apart); from_label narrows to a's label (NULL: any).
CREATE OR REPLACE TEMP MACRO disagreements_of(a, b, view, from_label := NULL) AS TABLE
SELECT x.id, x.label AS label_a, x.prob AS prob_a, y.label AS label_b, y.prob AS prob_b
FROM query_table('"cls_' || a || '".' || view) x
JOIN query_table('"cls_' || b || '".' || view) y ON x.id = y.id
WHERE x.label <> y.label AND (from_label IS NULL OR x.label = from_label)
ORDER BY least(x.prob, y.prob) DESC, x.id;
