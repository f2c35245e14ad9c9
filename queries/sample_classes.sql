-- Step 1 of drawing a review set: the $top_classes most frequent predicted labels.
--
-- As in the study, the top-1 label of every image counts, with no probability
-- threshold. Ties in frequency are broken by label so the choice is reproducible.
-- `{predictions}` is one of the views predictions / caption_predictions / ensemble
-- (picked by the program from a fixed list, never from user text).
INSERT INTO review_classes
SELECT $set_name, label, rank, frequency
FROM (
    SELECT label,
           count(*) AS frequency,
           row_number() OVER (ORDER BY count(*) DESC, label) AS rank
    FROM {predictions}
    GROUP BY label
)
WHERE rank <= $top_classes;
