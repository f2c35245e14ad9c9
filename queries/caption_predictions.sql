-- The same classification from each caption's text embedding (items with a caption).
CREATE OR REPLACE VIEW caption_predictions AS
SELECT s.id,
       l1.label,
       s.caption_prob AS prob,
       l2.label AS label2,
       s.caption_prob2 AS prob2,
       s.caption_prob - coalesce(s.caption_prob2, 0) AS margin,
       s.caption_label AS label_idx,
       s.caption_sim AS sim
FROM item_scores s
JOIN labels l1 ON l1.label_idx = s.caption_label
LEFT JOIN labels l2 ON l2.label_idx = s.caption_label2
WHERE (SELECT fresh FROM scores_fresh);   -- never a score older than its vector (scores_fresh.sql)
