-- Review sets and the human marks on them (validation without ground truth).
--
-- A review set is a frozen list of (item, predicted label, probability) drawn by
-- sample_classes.sql + sample_items.sql. It is frozen because predictions change when
-- `classify` runs again with other prompts, while a mark judges what the reviewer saw.
--
-- A mark (`judgments`) judges a pair (image, label): "this image is a skyscraper: yes".
-- It is keyed by the pair, not by the set, so that a second set (another seed, or the
-- ensemble's predictions) reuses every pair already judged instead of asking twice.

CREATE TABLE IF NOT EXISTS review_sets (
    name VARCHAR PRIMARY KEY,
    source VARCHAR NOT NULL,            -- image | caption | ensemble
    top_classes INTEGER NOT NULL,
    per_class INTEGER NOT NULL,
    seed BIGINT NOT NULL,
    items BIGINT,
    created_at TIMESTAMP DEFAULT current_timestamp,
    classification VARCHAR              -- the named classification it was drawn from (classifications.sql)
);
-- (sets drawn before classifications had names: the one the workspace had, set when it was upgraded)
-- name: review_sets.classification
ALTER TABLE review_sets ADD COLUMN IF NOT EXISTS classification VARCHAR;
-- What the set is a random sample of, for the estimates that rest on its marks
-- (curate/validate/collection.py): `scope` the --where it was drawn under, as JSON
-- [[column, value], ...] ('[]': the whole collection; NULL: a set of an older curate, taken
-- as the whole collection); `target_width` the sequential review's target (NULL: a fixed
-- set, every drawn image to be marked; else the page stops a class once its interval is
-- that narrow: curate sample --target-width).
ALTER TABLE review_sets ADD COLUMN IF NOT EXISTS scope VARCHAR;
ALTER TABLE review_sets ADD COLUMN IF NOT EXISTS target_width DOUBLE;

CREATE TABLE IF NOT EXISTS review_classes (
    set_name VARCHAR NOT NULL,
    label VARCHAR NOT NULL,
    rank INTEGER NOT NULL,              -- 1 = most frequent predicted label
    frequency BIGINT NOT NULL,          -- images predicted with this label in the whole collection
    PRIMARY KEY (set_name, label)
);

CREATE TABLE IF NOT EXISTS review_items (
    set_name VARCHAR NOT NULL,
    position INTEGER NOT NULL,          -- the order the review page shows them in, from 0
    id BIGINT NOT NULL,
    label VARCHAR NOT NULL,
    prob DOUBLE NOT NULL,
    PRIMARY KEY (set_name, position),
    UNIQUE (set_name, id)
);

CREATE TABLE IF NOT EXISTS judgments (
    id BIGINT NOT NULL,
    label VARCHAR NOT NULL,
    mark VARCHAR NOT NULL CHECK (mark IN ('hit', 'miss', 'skip')),
    marked_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (id, label)
);

-- One row per item of every set, with its image, caption and mark (NULL = not marked yet).
-- `SELECT * FROM review_sheet WHERE set_name = '...' ORDER BY position` is the review sheet.
CREATE OR REPLACE VIEW review_sheet AS
SELECT r.set_name, r.position, r.id, i.path, i.caption, r.label, r.prob, j.mark, j.marked_at
FROM review_items r
LEFT JOIN items i ON i.id = r.id
LEFT JOIN judgments j ON j.id = r.id AND j.label = r.label;

-- Every set's marks as the report reads them (report_*.sql): the class's frequency in the
-- collection and its rank (1 = most frequent) beside each item's label, prob and mark.
CREATE OR REPLACE VIEW review_marks AS
SELECT r.set_name, r.position, r.id, r.label, r.prob, j.mark, c.frequency, c.rank
FROM review_items r
JOIN review_classes c ON c.set_name = r.set_name AND c.label = r.label
LEFT JOIN judgments j ON j.id = r.id AND j.label = r.label;
