-- Re-chunk and repartition: the ledgers of `rpmstore rechunk` and `rpmstore repartition`.
-- A run rewrites a hypertable into a new one (new chunk interval or space dimension), chunk by
-- chunk, resumably; these tables are its memory (progress, lineage, verification,
-- reconciliation), each batch committed together with its ledger update.

-- One row per migration of one hypertable. At most one run per table is active (copying, or
-- cut over and not yet finalized): the old table is kept until `rechunk finalize` drops it.
CREATE TABLE rpm.rechunk_runs (
    run_id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind            text NOT NULL CHECK (kind IN ('rechunk', 'repartition')),
    table_schema    text NOT NULL,
    table_name      text NOT NULL,  -- the live name, before and after the swap
    shadow_name     text NOT NULL,  -- the new table's name while it is filled
    retired_name    text NOT NULL,  -- the old table's name between cutover and finalize
    source_dimensions jsonb NOT NULL,  -- [{column, kind, interval | partitions}], in order
    target_dimensions jsonb NOT NULL,
    state           text NOT NULL DEFAULT 'copying'
                    CHECK (state IN ('copying', 'cut_over', 'rolled_back', 'finalized')),
    operator        text NOT NULL,  -- OS user@host that started it
    db_role         text NOT NULL DEFAULT current_user,
    started_at      timestamptz NOT NULL DEFAULT now(),
    verified_at     timestamptz,
    cut_over_at     timestamptz,
    rolled_back_at  timestamptz,
    finalized_at    timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX rechunk_runs_one_active ON rpm.rechunk_runs (table_schema, table_name)
    WHERE state IN ('copying', 'cut_over');

-- Progress and verification per source chunk: the copy resumes at next_block (a batch is a
-- range of the chunk's heap blocks, committed with this row), and a chunk is verified when the
-- new table holds exactly its rows (count and an order-independent checksum, one snapshot).
CREATE TABLE rpm.rechunk_chunks (
    run_id          bigint NOT NULL REFERENCES rpm.rechunk_runs (run_id),
    source_chunk    text NOT NULL,  -- schema-qualified chunk name
    range_start     timestamptz,
    range_end       timestamptz,
    predicate       text NOT NULL,  -- the chunk's dimension constraints: the rows it may hold
    state           text NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'copying', 'copied', 'verified', 'mismatch')),
    total_blocks    bigint,  -- heap size when its copy started; later rows were dual-written
    next_block      bigint NOT NULL DEFAULT 0,
    batches         integer NOT NULL DEFAULT 0,
    copied_rows     bigint NOT NULL DEFAULT 0,  -- inserted by the copy (dual writes excluded)
    source_rows     bigint,
    source_checksum numeric,
    target_rows     bigint,
    target_checksum numeric,
    operator        text NOT NULL,
    discovered_at   timestamptz NOT NULL DEFAULT now(),
    copy_started_at timestamptz,
    copied_at       timestamptz,
    verified_at     timestamptz,
    PRIMARY KEY (run_id, source_chunk)
);

-- Lineage: which chunks of the new table hold the rows of each source chunk.
CREATE TABLE rpm.rechunk_lineage (
    run_id       bigint NOT NULL,
    source_chunk text NOT NULL,
    target_chunk text NOT NULL,
    row_count    bigint NOT NULL CHECK (row_count >= 0),
    checksum     numeric NOT NULL,
    operator     text NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, source_chunk, target_chunk),
    FOREIGN KEY (run_id, source_chunk) REFERENCES rpm.rechunk_chunks (run_id, source_chunk)
);

-- Reconciliation: rows per UTC day in the old and the new table, read in one snapshot just
-- before the cutover; the cutover is refused unless every difference is zero.
CREATE TABLE rpm.rechunk_reconciliation (
    run_id     bigint NOT NULL REFERENCES rpm.rechunk_runs (run_id),
    day        date NOT NULL,
    old_rows   bigint NOT NULL,
    new_rows   bigint NOT NULL,
    difference bigint GENERATED ALWAYS AS (new_rows - old_rows) STORED,
    checked_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, day)
);

-- Installed on the live table while the copy runs (and on the new one until finalize): rows are
-- mirrored into the other table by insert triggers only, so an UPDATE, DELETE or TRUNCATE would
-- make the two disagree. Refused with the run's message instead.
CREATE FUNCTION rpm.rechunk_refuse_change() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    RAISE EXCEPTION '%: % is refused until the migration is finalized or rolled back',
        TG_ARGV[0], TG_OP
        USING ERRCODE = 'object_in_use';
END
$$;
