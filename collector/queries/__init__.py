"""Named fleet queries: one .sql file each, runnable unchanged on DuckDB and Spark SQL."""
