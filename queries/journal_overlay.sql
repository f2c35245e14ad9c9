-- What a read-only connection shows as `judgments` while the review journal holds marks not
-- folded in yet (curate/validate/review/journal.py; journal.sql checks its lines): a TEMP
-- view over the database's own table and the journal's good marks (TEMP table
-- journal_marks, journal_latest's rows); of a pair in both, the later mark, and of two
-- at the same time the journal's. The table is named through its database (query_table
-- over current_database()): in a view called judgments, `judgments` and `main.judgments`
-- would find the view itself.
-- Setup: CREATE OR REPLACE TEMP TABLE journal_marks AS SELECT 1 AS line, id, label, 'skip' AS mark, now()::TIMESTAMP AS marked_at FROM judgments LIMIT 2;
-- Usage: SELECT count(*) FROM judgments WHERE mark = 'skip';

CREATE OR REPLACE TEMP VIEW judgments AS
SELECT id, label, mark, marked_at FROM (
    SELECT id, label, mark, marked_at, 0 AS src, 0 AS line
    FROM query_table('"' || replace(current_database(), '"', '""') || '".main.judgments')
    UNION ALL
    SELECT id, label, mark, marked_at, 1, line FROM temp.main.journal_marks)
QUALIFY row_number() OVER (PARTITION BY id, label ORDER BY marked_at DESC, src DESC, line DESC) = 1;
