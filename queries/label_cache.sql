-- Label text vectors, cached per model and prompt wording (`curate classify`).
--
-- A label's vector is the normalised mean of its prompts' embeddings. The cache key
-- is a hash of the model identity and every prompt text in label order, so another
-- model, another wording or an edited label file never reuses a stale vector.

CREATE TABLE IF NOT EXISTS label_vector_sets (
    cache_key VARCHAR PRIMARY KEY,
    model VARCHAR NOT NULL,
    pretrained VARCHAR NOT NULL,
    embed_dim INTEGER NOT NULL,
    label_set VARCHAR NOT NULL,
    prompts VARCHAR NOT NULL,
    logit_scale DOUBLE NOT NULL,          -- the model's own (exp of its parameter)
    created_at TIMESTAMP DEFAULT current_timestamp
);

CREATE TABLE IF NOT EXISTS label_vectors (
    cache_key VARCHAR NOT NULL,
    label_idx INTEGER NOT NULL,
    label VARCHAR NOT NULL,
    prompts VARCHAR[] NOT NULL,
    vector DOUBLE[] NOT NULL,             -- unit length, float64
    PRIMARY KEY (cache_key, label_idx)
);
