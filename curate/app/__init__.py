"""`curate app`: the local web app to look at a workspace: browse a selection as a grid,
search by text or by example, mark tiles, export what is shown (docs/app.md).

    selection.py   what the page asks for (classification, mode, labels, min-prob, where,
                   status), checked, and the `curate filter` command that writes it
    data.py        the reads: grid pages, label counts, one item in detail (queries/app_*.sql),
                   each on its own read-only connection
    thumbnails.py  thumbnails made on first view, kept in one SQLite file in the workspace
    marks.py       marks made while browsing: their own journal, never a review set's marks
    warm.py        the model's text tower and the image index, loaded once in the background
    server.py      the Starlette routes, the Host/Origin/JSON checks, uvicorn on 127.0.0.1

Nothing here is imported by `import curate.cli`: starlette, uvicorn, torch and faiss load
when `curate app` starts.
"""
