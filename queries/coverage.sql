-- The study's Table 1: how many images the top label classifies at each threshold
-- (prob >= threshold), from 0.0 to 1.0 by 0.1.
CREATE OR REPLACE VIEW coverage AS
WITH thresholds AS (
    SELECT i / 10 AS threshold FROM range(0, 11) r(i)
),
counts AS (
    SELECT t.threshold,
           (SELECT count(*) FROM predictions p WHERE p.prob >= t.threshold) AS classified,
           (SELECT count(*) FROM predictions) AS images
    FROM thresholds t
)
SELECT threshold, classified, images, classified / nullif(images, 0) AS share
FROM counts
ORDER BY threshold;
