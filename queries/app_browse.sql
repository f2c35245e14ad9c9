-- What the local app (`curate app`, curate/app/) shows: a selection of one classification's
-- predictions as a grid, the labels' counts at a threshold, one item in detail.
--
-- The app reads the workspace through read-only connections (another process may write it
-- meanwhile), so everything here is TEMP: made on the reader's connection, never stored.
-- The names a macro reads (predictions, caption_predictions, ensemble, item_scores,
-- label_scores, labels) resolve through the connection's search path at call time: the
-- classification the app selected (curate/classify/registry.py `select`).
-- Usage: SELECT * FROM app_view('predictions', 0.5, []) LIMIT 5;
-- Usage: SELECT * FROM app_label_counts('predictions', 0.5) LIMIT 5;
-- Usage: SELECT * FROM app_rejected() LIMIT 5;
-- Usage: SELECT * FROM app_ranked('predictions') LIMIT 5;
-- Usage: SELECT * FROM app_text_lengths(0) LIMIT 5;
-- Usage: SELECT * FROM app_top_labels((SELECT min(id) FROM items), 0.2, 0.5);

-- app_view(rel, min_prob, wanted): the predictions of the relation named `rel`
-- (predictions | caption_predictions | ensemble, the views `curate filter --mode` reads, or
-- app_calibrated below) at or above min_prob, top label in `wanted` (an empty list: any).
-- The same rule as subset_predictions (subsets.sql), so the grid is what the export writes.
CREATE OR REPLACE TEMP MACRO app_view(rel, min_prob, wanted) AS TABLE
SELECT p.id, p.label, p.prob
FROM query_table(rel) p
WHERE p.prob >= min_prob AND (len(wanted) = 0 OR list_contains(wanted, p.label));

-- app_ranked(rel): every prediction of the relation named `rel` in the grid's order (the most
-- probable first, then by id), its label as its position in `labels` (label_idx order): what
-- the app keeps in memory to answer app_view and app_label_counts without opening the file
-- again (curate/app/data.py `Ranked`; a NULL label or probability makes it use these macros).
CREATE OR REPLACE TEMP MACRO app_ranked(rel) AS TABLE
SELECT p.id, l.pos AS label, p.prob
FROM query_table(rel) p
LEFT JOIN (SELECT label, row_number() OVER (ORDER BY label_idx) - 1 AS pos FROM labels) l ON l.label = p.label
ORDER BY p.prob DESC, p.id;

-- app_text_lengths(cut) and app_texts(cut): every item's path (less its first `cut` characters:
-- the prefix all paths share, kept once) and caption, by id: the lengths (in characters; NULL: -1)
-- as columns, and the texts as two long strings, so that a million of them arrive as three
-- arrays and two strings, not as two million Python objects (curate/app/data.py `Texts`).
CREATE OR REPLACE TEMP MACRO app_text_lengths(cut) AS TABLE
SELECT id, coalesce(length(path) - cut, -1) AS path_len, coalesce(length(caption), -1) AS caption_len
FROM items
ORDER BY id;

CREATE OR REPLACE TEMP MACRO app_texts(cut) AS TABLE
SELECT coalesce(string_agg(substr(path, cut + 1), '' ORDER BY id), '') AS paths,
       coalesce(string_agg(caption, '' ORDER BY id), '') AS captions
FROM items;

-- app_label_counts(rel, min_prob): the sidebar, the coverage table per label: how many
-- items each label is the top label of at or above min_prob, and of all its items.
CREATE OR REPLACE TEMP MACRO app_label_counts(rel, min_prob) AS TABLE
SELECT l.label, count(p.id) FILTER (p.prob >= min_prob) AS kept, count(p.id) AS items
FROM labels l LEFT JOIN query_table(rel) p ON p.label = l.label
GROUP BY l.label, l.label_idx
ORDER BY kept DESC, items DESC, l.label_idx;

-- app_rejected(): items build-index could not use, with the reason of their latest rejection.
CREATE OR REPLACE TEMP MACRO app_rejected() AS TABLE
SELECT i.id, arg_max(r.reason, r.rejected_at) AS reason, arg_max(r.stage, r.rejected_at) AS stage
FROM items i LEFT JOIN rejected r ON r.item_id = i.id
WHERE i.status = 'rejected'
GROUP BY i.id;

-- app_top_labels(item, text_weight, text_min): an item's best labels by each view, rank 1 first:
-- by the image, by the caption, and by the ensemble (the mix of the two, the caption
-- counting when its own top probability reaches text_min; ensemble.sql), over the labels
-- classify stored for it (all of them with storage 'full', its top-k with 'topk').
CREATE OR REPLACE TEMP MACRO app_top_labels(item, text_weight, text_min) AS TABLE
WITH s AS (
    SELECT s.label_idx, l.label, s.image_prob, s.caption_prob,
           coalesce(max(s.caption_prob) OVER () >= text_min, false) AS caption_used
    FROM label_scores s JOIN labels l ON l.label_idx = s.label_idx
    WHERE s.id = item
),
v AS (
    SELECT 'image' AS view, label, label_idx, image_prob AS prob FROM s WHERE image_prob IS NOT NULL
    UNION ALL
    SELECT 'caption', label, label_idx, caption_prob FROM s WHERE caption_prob IS NOT NULL
    UNION ALL
    SELECT 'ensemble', label, label_idx,
           CASE WHEN caption_used THEN (1 - text_weight) * image_prob + text_weight * caption_prob
                ELSE image_prob END
    FROM s WHERE image_prob IS NOT NULL
)
SELECT view, label, prob, row_number() OVER (PARTITION BY view ORDER BY prob DESC, label_idx) AS rank
FROM v
QUALIFY rank <= 5
ORDER BY view, rank;
