-- Zero-shot classification of every image: its top label by the image's softmax
-- over the label set, the runner-up, and the margin between them.
-- Ties go to the label that comes first in the label set.
CREATE OR REPLACE VIEW predictions AS
SELECT s.id,
       l1.label,
       s.image_prob AS prob,
       l2.label AS label2,
       s.image_prob2 AS prob2,
       s.image_prob - coalesce(s.image_prob2, 0) AS margin,
       s.image_label AS label_idx,
       s.image_sim AS sim
FROM item_scores s
JOIN labels l1 ON l1.label_idx = s.image_label
LEFT JOIN labels l2 ON l2.label_idx = s.image_label2
WHERE (SELECT fresh FROM scores_fresh);   -- never a score older than its vector (scores_fresh.sql)
