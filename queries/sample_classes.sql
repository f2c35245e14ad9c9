-- Step 1 of drawing a review set: the top_classes most frequent predicted labels.
--
-- As in the study, the top-1 label of every image counts, with no probability
-- threshold. Ties in frequency are broken by label so the choice is reproducible.
-- `predictions` names the relation to count: predictions, caption_predictions or
-- ensemble (`curate sample --source image|caption|ensemble`).
-- Usage: SELECT * FROM sample_classes('predictions', 10);
-- (`curate sample` stores the rows in review_classes under the set's name.)
CREATE OR REPLACE TEMP MACRO sample_classes(predictions, top_classes) AS TABLE
SELECT label, rank, frequency
FROM (
    SELECT label,
           count(*) AS frequency,
           row_number() OVER (ORDER BY count(*) DESC, label) AS rank
    FROM query_table(predictions)
    GROUP BY label
)
WHERE rank <= top_classes
ORDER BY rank;
