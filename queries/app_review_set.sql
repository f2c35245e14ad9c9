-- The browse grid's "review set" filter (curate/app/data.py): only the images of one review set
-- (`curate sample`, queries/sample_schema.sql), shown with the classification's predictions of
-- today (the set keeps the label and probability it was drawn with: `curate review` shows those).
-- Made on the app's read-only connection when a set is chosen (the table exists once one was drawn).
-- Usage: SELECT * FROM app_review_set((SELECT min(name) FROM review_sets)) LIMIT 5;
CREATE OR REPLACE TEMP MACRO app_review_set(set_name_) AS TABLE
SELECT id FROM review_items WHERE set_name = set_name_;
