-- The review journal's lines checked before any reaches `judgments` (curate/validate/review/journal.py).
-- `ws/marks.jsonl` is a file anyone can edit, so each line is input like any other: one
-- bad line must never stop a command or keep the good ones out. Python reads the JSON
-- (text, an object, the four keys of the right JSON types); this macro says what else is
-- wrong with a line, in `reason` (NULL: a good mark), so the fold and the read-only overlay
-- apply the same rules. `lines` names a relation with columns line (its number in the
-- journal), id BIGINT, label, mark, marked_at (VARCHAR, as written).
--
-- The rules, in the order a reason is given:
--   mark       one of judgments' CHECK (sample_schema.sql): hit, miss, skip
--   marked_at  a timestamp, finite, and not over a day ahead of this machine's clock: the
--              later mark on a pair wins, so a mark from the future would win for good
--   id         an item of the workspace
--   label      a label the item was drawn with in a review set: the server writes the
--              set's label, never the client's, so a mark judges what was shown
-- Setup: CREATE OR REPLACE TEMP TABLE journal_lines AS SELECT row_number() OVER () AS line, id, label, 'hit' AS mark, CAST(now() AS VARCHAR) AS marked_at FROM review_items UNION ALL SELECT 0, -1, 'x', 'maybe', 'yesterday';
-- Setup: CREATE OR REPLACE TEMP TABLE journal_lines_checked AS SELECT 1 AS line, 5 AS id, 'bridge' AS label, 'hit' AS mark, CAST(now() AS TIMESTAMP) AS marked_at, NULL AS reason;
-- Usage: SELECT line, id, label, mark, marked_at, reason FROM journal_checked('journal_lines') ORDER BY line;
CREATE OR REPLACE TEMP MACRO journal_checked(lines) AS TABLE
SELECT j.line, j.id, j.label, j.mark, try_cast(j.marked_at AS TIMESTAMP) AS marked_at,
       CASE
           WHEN j.mark NOT IN ('hit', 'miss', 'skip')
               THEN 'mark "' || left(j.mark, 40) || '" is not hit, miss or skip'
           WHEN try_cast(j.marked_at AS TIMESTAMP) IS NULL
               THEN 'marked_at "' || left(j.marked_at, 40) || '" is not a timestamp'
           WHEN NOT isfinite(try_cast(j.marked_at AS TIMESTAMP))
                OR try_cast(j.marked_at AS TIMESTAMP) > current_localtimestamp() + INTERVAL 1 DAY
               THEN 'marked_at "' || left(j.marked_at, 40) || '" is in the future'
           WHEN NOT EXISTS (SELECT 1 FROM items i WHERE i.id = j.id)
               THEN 'no item has id ' || j.id
           WHEN NOT EXISTS (SELECT 1 FROM review_items r WHERE r.id = j.id AND r.label = j.label)
               THEN 'item ' || j.id || ' was drawn with no label "' || left(j.label, 40) || '" in any review set'
       END AS reason
FROM query_table(lines) j;

-- The good marks of checked lines (a relation journal_checked returned), one per (id, label):
-- the latest, and of two at the same time the later line, as the server writes them. The
-- fold and the overlay both take these, so a writer and a reader agree on every pair.
-- Usage: SELECT * FROM journal_latest('journal_lines_checked');
CREATE OR REPLACE TEMP MACRO journal_latest(checked) AS TABLE
SELECT line, id, label, mark, marked_at FROM query_table(checked)
WHERE reason IS NULL
QUALIFY row_number() OVER (PARTITION BY id, label ORDER BY marked_at DESC, line DESC) = 1;
