-- calibration.sql's macro calibrated_probs as a TEMP one: `curate report` fits the calibration
-- and computes its estimates on a read-only connection, before anything is saved, so the
-- macro lives in the connection (it also shadows a stored one an older curate saved).
-- The two definitions are kept the same by tests/core/test_schema.py.
-- Needs predictions.sql, caption_predictions.sql and ensemble.sql (`curate classify`).
-- Usage: SELECT count(*) FROM calibrated_probs(1 / 1.5, 'image', 205, 'image_prob');
CREATE OR REPLACE TEMP MACRO calibrated_probs(inv_t, fit_source, n_labels, scores_col) AS TABLE
WITH fit AS (
    SELECT inv_t::DOUBLE AS inv_t, fit_source::VARCHAR AS source, n_labels::INTEGER AS n_labels,
           scores_col::VARCHAR AS col
),
p AS (
    SELECT id, label, prob, label2, prob2, margin FROM predictions
    WHERE (SELECT source FROM fit) = 'image'
    UNION ALL
    SELECT id, label, prob, label2, prob2, margin FROM caption_predictions
    WHERE (SELECT source FROM fit) = 'caption'
    UNION ALL
    SELECT id, label, prob, label2, prob2, margin FROM ensemble
    WHERE (SELECT source FROM fit) = 'ensemble'
),
-- per item, over its stored labels: sum of p^(1/T), sum of p, how many
z AS (
    SELECT s.id, sum(pow(s.x, fit.inv_t)) AS s, sum(s.x) AS m, count(*) AS n
    FROM (SELECT id, CASE (SELECT col FROM fit) WHEN 'image_prob' THEN image_prob
                                                WHEN 'caption_prob' THEN caption_prob END AS x
          FROM label_scores
          WHERE (SELECT col FROM fit) IS NOT NULL) s, fit
    WHERE s.x IS NOT NULL
    GROUP BY s.id
)
SELECT p.*,
       pow(p.prob, fit.inv_t) / CASE
           WHEN fit.col IS NULL THEN   -- the top two + an even tail over L - 2 labels
               pow(p.prob, fit.inv_t) + pow(coalesce(p.prob2, 0), fit.inv_t)
               + CASE WHEN fit.n_labels > 2 AND 1 - p.prob - coalesce(p.prob2, 0) > 1e-12
                      THEN (fit.n_labels - 2)
                           * pow((1 - p.prob - coalesce(p.prob2, 0)) / (fit.n_labels - 2), fit.inv_t)
                      ELSE 0 END
           ELSE                        -- every stored label + an even tail over the others
               z.s + CASE WHEN fit.n_labels > z.n AND 1 - z.m > 1e-12
                          THEN (fit.n_labels - z.n) * pow((1 - z.m) / (fit.n_labels - z.n), fit.inv_t)
                          ELSE 0 END
       END AS calibrated_prob
FROM p CROSS JOIN fit LEFT JOIN z ON z.id = p.id
WHERE fit.col IS NULL OR z.id IS NOT NULL;
