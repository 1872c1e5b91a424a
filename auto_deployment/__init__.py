"""Everything that keeps the serving slots fresh: ingest, prepare, train, evaluate, version,
release, notify, schedule, audit and reports. One module per stage of the life cycle."""
