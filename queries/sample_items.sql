-- Step 2 of drawing a review set: per_class random images of each label that step 1
-- (sample_classes.sql) stored in review_classes under the name review_set.
--
-- "Random" is the order of hash(id, seed): the same seed draws the same images on any
-- thread count (USING SAMPLE is only repeatable single-threaded, and samples the whole
-- table rather than each group). Because the order depends on the id and the seed only,
-- two sets drawn with one seed from overlapping predictions (image vs ensemble) share
-- most of their images, so marks already made are reused. (hash() is DuckDB's: stable
-- within a DuckDB version; a drawn set is stored in review_items, so it never changes.)
--
-- The review page shows the set class by class (most frequent first), in hash order
-- inside each class: the reviewer answers one question ("is this a bakery?") at a time.
-- `predictions` is the relation the set was drawn from (predictions, caption_predictions
-- or ensemble). Needs sample_schema.sql (review_classes).
-- Usage: SELECT * FROM sample_items('predictions', 'image-top10x100-seed0', 100, 0);
-- (`curate sample` stores the rows in review_items.)
CREATE OR REPLACE TEMP MACRO sample_items(predictions, review_set, per_class, seed) AS TABLE
SELECT review_set AS set_name,
       (row_number() OVER (ORDER BY rank, h, id) - 1)::INTEGER AS position,
       id, label, prob
FROM (
    SELECT p.id::BIGINT AS id, p.label, p.prob::DOUBLE AS prob, c.rank,
           hash(p.id::BIGINT, seed::BIGINT) AS h
    FROM query_table(predictions) p
    JOIN review_classes c ON c.set_name = review_set AND c.label = p.label
    QUALIFY row_number() OVER (PARTITION BY p.label ORDER BY h, id) <= per_class
)
ORDER BY position;
