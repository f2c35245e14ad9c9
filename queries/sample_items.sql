-- Step 2 of drawing a review set: $per_class random images of each chosen label.
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
INSERT INTO review_items
SELECT $set_name,
       (row_number() OVER (ORDER BY rank, h, id) - 1)::INTEGER AS position,
       id, label, prob
FROM (
    SELECT p.id::BIGINT AS id, p.label, p.prob::DOUBLE AS prob, c.rank,
           hash(p.id::BIGINT, $seed::BIGINT) AS h
    FROM {predictions} p
    JOIN review_classes c ON c.set_name = $set_name AND c.label = p.label
    QUALIFY row_number() OVER (PARTITION BY p.label ORDER BY h, id) <= $per_class
);
