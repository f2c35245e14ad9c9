-- The study's Table 1: how much of the collection a threshold classifies.
-- For t = 0.0, 0.1, ..., 1.0: images whose top probability in `{predictions}` (one of
-- predictions / caption_predictions / ensemble, picked by the program) is >= t, and
-- their share of $images (the images with an image prediction: the whole collection).
WITH thresholds AS (
    SELECT range / 10 AS threshold FROM range(0, 11)
)
SELECT t.threshold,
       count(p.prob) AS classified,
       count(p.prob) / $images::DOUBLE AS share
FROM thresholds t
LEFT JOIN {predictions} p ON p.prob >= t.threshold
GROUP BY t.threshold
ORDER BY t.threshold;
