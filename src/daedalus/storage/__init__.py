"""Where days and sources live: local paths or S3-compatible object storage (`s3://bucket/prefix`).

`uri` parses a root as the user wrote it and rejects other schemes; `s3` holds the endpoint and
credentials (from the ecosystem's `AWS_*` variables, never printed) and turns the clients'
failures into one-line errors; `objects` is a path-like view of one key (`ObjectPath`), enough
for the layout layer to list, read, write and delete what it keeps there.
"""
