-- The subsets `curate filter` writes.
--
-- subset_predictions: the predictions of one mode that are kept: top label in `wanted`
-- (an empty list: any label) with prob >= min_prob; or, with unmatched := true, the
-- images whose top label stays under min_prob (what cleaning drops). Modes: image,
-- caption, ensemble (the `ensemble` view, the study's defaults) and ensemble_with
-- (the ensemble with the parameters given, as in ensemble_with). text_weight and
-- text_min left out (NULL) are the classification's own: the study's defaults, which
-- classify records in score_settings (classify/scoring.py holds them, nothing else).
-- `curate filter` evaluates this once per call: what it writes, each row's runner-up
-- and the count of rows the stored top-k cannot prove all come from that one result.
CREATE OR REPLACE MACRO subset_predictions(mode, wanted, min_prob, unmatched := false,
                                           text_weight := NULL, text_min := NULL,
                                           image_min := 0.0, image_max := 1.0,
                                           renormalize := true) AS TABLE
SELECT *
FROM (
    SELECT id, label, prob, label2, prob2, margin, true AS exact
    FROM predictions WHERE mode = 'image'
    UNION ALL
    SELECT id, label, prob, label2, prob2, margin, true AS exact
    FROM caption_predictions WHERE mode = 'caption'
    UNION ALL
    SELECT id, label, prob, label2, prob2, margin, exact
    FROM ensemble WHERE mode = 'ensemble'
    UNION ALL
    SELECT id, label, prob, label2, prob2, margin, exact
    FROM ensemble_with(coalesce(text_weight, (SELECT ensemble_text_weight FROM score_settings)),
                       coalesce(text_min, (SELECT ensemble_text_min FROM score_settings)),
                       image_min := image_min, image_max := image_max, renormalize := renormalize)
    WHERE mode = 'ensemble_with'
)
WHERE CASE WHEN unmatched THEN prob < min_prob
           ELSE prob >= min_prob AND (len(wanted) = 0 OR list_contains(wanted, label)) END;

-- subset: the kept items as written out: id, path, caption, label, prob, then the
-- source's own columns (item_extras, workspace.sql: everything in items that curate
-- does not manage).
CREATE OR REPLACE MACRO subset(mode, wanted, min_prob, unmatched := false,
                               text_weight := NULL, text_min := NULL,
                               image_min := 0.0, image_max := 1.0, renormalize := true) AS TABLE
SELECT k.id, i.path, i.caption, k.label, k.prob,
       x.* EXCLUDE (id)
FROM subset_predictions(mode, wanted, min_prob, unmatched := unmatched,
                        text_weight := text_weight, text_min := text_min,
                        image_min := image_min, image_max := image_max,
                        renormalize := renormalize) k
JOIN items i ON i.id = k.id
JOIN item_extras x ON x.id = k.id
ORDER BY k.id;

-- How many items a mode scores (the "out of" of a filter's summary).
CREATE OR REPLACE MACRO scored_items(mode) AS
(SELECT count(*) FROM item_scores
 WHERE CASE WHEN mode = 'caption' THEN caption_label IS NOT NULL ELSE image_label IS NOT NULL END
   AND (SELECT fresh FROM scores_fresh));

-- coverage_for(mode): the study's Table 1 (coverage.sql) by `curate filter --mode`
-- (image | caption | ensemble), out of the mode's items (images: every embedded image;
-- caption: the items with a caption). `coverage` is coverage_for('image').
CREATE OR REPLACE MACRO coverage_for(mode) AS TABLE
SELECT * FROM coverage_of('predictions') WHERE mode = 'image'
UNION ALL
SELECT * FROM coverage_of('caption_predictions') WHERE mode = 'caption'
UNION ALL
SELECT * FROM coverage_of('ensemble') WHERE mode = 'ensemble'
ORDER BY threshold;
