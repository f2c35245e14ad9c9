-- Image + caption ensemble (the study, section 4.2), for every image.
--
-- For each label:  p = (1 - text_weight) * p_image + text_weight * p_caption
-- where the caption counts only when the item has one, the caption's own top
-- probability is >= text_min, and the image's top probability lies in
-- [image_min, image_max]. The defaults (0, 1) always allow it; narrowing them gives
-- the study's conditional variant, e.g. image_max := 0.5: the caption helps only the
-- images that the image alone leaves unsure. When the caption does not count, p is
-- the image probability (renormalize := true, the default), or (1 - text_weight) *
-- p_image as the formula reads literally (renormalize := false).
--
-- The top label is taken over the rows of label_scores. With storage 'topk' a label
-- with no row has p <= w_image * image_rest + w_caption * caption_rest (at most
-- 1/top_k), so a top probability above that bound is exactly the full argmax:
-- `exact` says so (always true with storage 'full'). Ties go to the first label.
-- Only the items whose caption counts are grouped over their rows; the others take the
-- image's own top two from item_scores (over every label), which is what the rows give.
CREATE OR REPLACE MACRO ensemble_with(text_weight, text_min, image_min := 0.0, image_max := 1.0,
                                      renormalize := true) AS TABLE
WITH w AS (
    -- per item: does the caption count, and the weights that follow
    SELECT g.*,
           CASE WHEN g.caption_used OR NOT renormalize THEN 1 - text_weight ELSE 1.0 END AS w_image,
           CASE WHEN g.caption_used THEN text_weight ELSE 0.0 END AS w_caption
    FROM (
        SELECT id, image_label, image_label2, image_prob, image_prob2, image_rest,
               coalesce(caption_prob >= text_min AND image_prob BETWEEN image_min AND image_max, false)
                   AS caption_used,
               coalesce(caption_rest, 0) AS caption_rest
        FROM item_scores
        WHERE image_label IS NOT NULL AND (SELECT fresh FROM scores_fresh)
    ) g
),
b AS (
    -- where the caption counts: the two best labels of the mix over the item's stored rows
    SELECT w.*, [-m.top[1][2], -m.top[2][2]] AS top_labels, [m.top[1][1], m.top[2][1]] AS top_probs
    FROM (
        -- (p, -label): the largest p first, and of equal ones the first label
        SELECT s.id,
               max((w.w_image * s.image_prob + w.w_caption * coalesce(s.caption_prob, 0),
                    -s.label_idx::INTEGER), 2) AS top
        FROM label_scores s
        JOIN w ON w.id = s.id
        WHERE w.caption_used
        GROUP BY s.id
    ) m
    JOIN w ON w.id = m.id
    UNION ALL
    -- where it does not: the image's own two best labels, over every label (item_scores)
    SELECT w.*, [w.image_label, w.image_label2], [w.w_image * w.image_prob, w.w_image * w.image_prob2]
    FROM w
    WHERE NOT w.caption_used
)
SELECT b.id,
       l1.label,
       b.top_probs[1] AS prob,
       l2.label AS label2,
       b.top_probs[2] AS prob2,
       b.top_probs[1] - coalesce(b.top_probs[2], 0) AS margin,
       b.caption_used,
       b.top_probs[1] >= b.w_image * b.image_rest + b.w_caption * b.caption_rest AS exact,
       b.top_labels[1] AS label_idx
FROM b
JOIN labels l1 ON l1.label_idx = b.top_labels[1]
LEFT JOIN labels l2 ON l2.label_idx = b.top_labels[2];

-- The study's defaults: 0.8 image + 0.2 caption, the caption counting when its own
-- top probability reaches 0.5 (the study's working threshold). The same as
-- `SELECT * FROM ensemble_with(0.2, 0.5)`, but computed while scoring, over every
-- label (so `exact` is always true), because the grouping above takes seconds at 1M
-- images and this reads one row per item.
CREATE OR REPLACE VIEW ensemble AS
SELECT s.id,
       l1.label,
       s.ensemble_prob AS prob,
       l2.label AS label2,
       s.ensemble_prob2 AS prob2,
       s.ensemble_prob - coalesce(s.ensemble_prob2, 0) AS margin,
       s.ensemble_caption_used AS caption_used,
       true AS exact,
       s.ensemble_label AS label_idx
FROM item_scores s
JOIN labels l1 ON l1.label_idx = s.ensemble_label
LEFT JOIN labels l2 ON l2.label_idx = s.ensemble_label2
WHERE (SELECT fresh FROM scores_fresh);   -- never a score older than its vector (scores_fresh.sql)
