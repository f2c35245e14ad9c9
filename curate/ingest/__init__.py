"""Stage 1, ingest: sources and manifests in, images decoded, embedded once by the model,
shards committed, FAISS indexes built (`curate build-index`)."""
