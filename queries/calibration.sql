-- The calibration `curate report` fits on the marks of a review set, and what
-- `curate filter --calibrated` reads (docs/validation.md).
--
-- meta['calibration'] holds the fit as JSON: temperature T, source (image | caption |
-- ensemble), labels (L, the size of the softmax), scores_column (the label_scores
-- column with the source's per-label probabilities; null for the ensemble), and how
-- it was fitted. calibration_thresholds holds one row per sampled class.
-- Needs predictions.sql, caption_predictions.sql and ensemble.sql (`curate classify`).

CREATE TABLE IF NOT EXISTS calibration_thresholds (
    label VARCHAR PRIMARY KEY,
    threshold DOUBLE,                     -- on the calibrated probability; NULL: the class
                                          -- never reaches the target precision on the marks
    precision DOUBLE,
    support INTEGER,                      -- judged marks at or above the threshold
    marked INTEGER,                       -- judged marks of the class
    kept BIGINT                           -- images of the collection the threshold keeps
);

-- Every prediction of a source (image | caption | ensemble) with its temperature-scaled
-- top probability `calibrated_prob` (softmax of log p / T): inv_t = 1 / T, n_labels = L,
-- scores_col = the label_scores column with the source's per-label probabilities, or
-- NULL. Where classify stored every label's probability the scaling is exact; a label
-- without a row, and every label but the top two when scores_col is NULL, shares the
-- remaining mass evenly. `curate report` counts what each class threshold keeps with it
-- before saving the fit (curate/validate/calibration.py); the view below applies the
-- saved one.
-- queries/calibrated_probs.sql holds the same macro as a TEMP one, for the read-only connections
-- that fit a calibration before saving it (tests/core/test_schema.py keeps the two the same).
-- Usage: SELECT count(*) FROM calibrated_probs(1 / 1.5, 'image', 205, 'image_prob');
-- name: calibrated_probs
CREATE OR REPLACE MACRO calibrated_probs(inv_t, fit_source, n_labels, scores_col) AS TABLE
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

-- Every prediction of the calibrated source with its calibrated top probability (the
-- fit saved in meta['calibration']), its class's threshold, and whether it reaches it
-- (`keep`, with a tolerance of 1e-12, calibration.TOLERANCE).
-- name: calibrated_predictions
CREATE OR REPLACE VIEW calibrated_predictions AS
SELECT c.*, t.threshold AS class_threshold,
       coalesce(c.calibrated_prob >= t.threshold - 1e-12, false) AS keep
FROM calibrated_probs(
    (SELECT 1 / (value ->> '$.temperature')::DOUBLE FROM meta WHERE key = 'calibration'),
    (SELECT value ->> '$.source' FROM meta WHERE key = 'calibration'),
    (SELECT (value ->> '$.labels')::INTEGER FROM meta WHERE key = 'calibration'),
    (SELECT value ->> '$.scores_column' FROM meta WHERE key = 'calibration')) c
LEFT JOIN calibration_thresholds t ON t.label = c.label;
