"""FAISS index recipes, as data (JSON), chosen by collection size or named with --index."""
