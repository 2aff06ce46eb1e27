-- Re-chunk and repartition (psycopg: %(name)s placeholders). Blocks that name the tables being
-- migrated hold {placeholders} for identifiers, filled with psycopg.sql.Identifier by
-- retention/rechunk; values are always bound parameters. Catalogue reads run with
-- search_path = pg_catalog so every deparsed name comes back schema-qualified.

-- ---------------------------------------------------------------------------------------------
-- Catalogue: what the live table is, so the new one can be built as a faithful copy.
-- ---------------------------------------------------------------------------------------------

-- name: search_path
SELECT current_setting('search_path');

-- name: set_search_path
SELECT set_config('search_path', %(search_path)s, true);

-- name: session
-- The copy must see every row: with row_security off, a policy that would hide rows from this
-- session is an error instead of a silent gap.
SELECT set_config('row_security', 'off', false), set_config('statement_timeout', '0', false);

-- name: repeatable_read
SET TRANSACTION ISOLATION LEVEL REPEATABLE READ;

-- name: local_lock_timeout
SELECT set_config('lock_timeout', %(timeout)s, true);

-- name: asynchronous_commit
-- A batch and its ledger row commit together: a crash loses both or neither, so the batch
-- need not wait for its WAL flush (the cutover's commit flushes everything before it).
SELECT set_config('synchronous_commit', 'off', true);

-- name: normalize_interval
-- As the dimensions query prints it, so '168 hours' and '7 days' compare equal.
SELECT justify_hours(%(interval)s::interval)::text;

-- name: hypertable
SELECT c.oid::bigint, h.id, pg_get_userbyid(c.relowner), c.relrowsecurity, c.relforcerowsecurity,
       c.reloptions, c.relreplident::text, obj_description(c.oid, 'pg_class'),
       (SELECT count(*) FROM _timescaledb_catalog.hypertable ch
         WHERE ch.id = h.compressed_hypertable_id) > 0 AS compressed
FROM _timescaledb_catalog.hypertable h
JOIN pg_namespace n ON n.nspname = h.schema_name
JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = h.table_name
WHERE h.schema_name = %(schema)s AND h.table_name = %(name)s;

-- name: dimensions
SELECT column_name, column_type::text, dimension_type, justify_hours(time_interval)::text,
       num_partitions
FROM timescaledb_information.dimensions
WHERE hypertable_schema = %(schema)s AND hypertable_name = %(name)s
ORDER BY dimension_number;

-- name: columns
-- In column order; dropped columns are skipped (the new table gets no holes).
SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
       pg_get_expr(d.adbin, d.adrelid), a.attgenerated::text, a.attidentity::text,
       CASE WHEN a.attcollation <> t.typcollation THEN co.collname END,
       CASE WHEN co.collnamespace IS NOT NULL AND a.attcollation <> t.typcollation
            THEN cn.nspname END,
       a.attstattarget, nullif(a.attcompression::text, ''),
       CASE WHEN a.attstorage <> t.typstorage THEN a.attstorage::text END,
       col_description(a.attrelid, a.attnum),
       -- Checksums hash each column with its type's own hash function; a type without one
       -- (json, point...) is hashed through its text form.
       EXISTS (SELECT FROM pg_opclass oc JOIN pg_am am ON am.oid = oc.opcmethod
               WHERE am.amname = 'hash' AND oc.opcdefault AND oc.opcintype = a.atttypid)
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
LEFT JOIN pg_collation co ON co.oid = a.attcollation
LEFT JOIN pg_namespace cn ON cn.oid = co.collnamespace
WHERE a.attrelid = %(oid)s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum;

-- name: constraints
-- Not-null constraints are part of the columns. conindid names the index behind a unique,
-- primary key or exclusion constraint (it shares the constraint's name).
SELECT k.conname, k.contype::text, pg_get_constraintdef(k.oid), k.conindid <> 0,
       obj_description(k.oid, 'pg_constraint')
FROM pg_constraint k
WHERE k.conrelid = %(oid)s AND k.contype IN ('c', 'u', 'p', 'x', 'f')
ORDER BY k.contype, k.conname;

-- name: indexes
-- Indexes that are not behind a constraint (those come with their constraint), with the
-- columns they cover, to check that the new partitioning columns are in every unique index.
SELECT ic.relname, pg_get_indexdef(i.indexrelid), i.indisunique,
       ARRAY(SELECT a.attname::text
             FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k (attnum, position)
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
             ORDER BY k.position),
       obj_description(i.indexrelid, 'pg_class'),
       EXISTS (SELECT FROM pg_constraint k WHERE k.conindid = i.indexrelid) AS constraint_backed
FROM pg_index i
JOIN pg_class ic ON ic.oid = i.indexrelid
WHERE i.indrelid = %(oid)s
ORDER BY ic.relname;

-- name: triggers
-- User triggers only: not internal ones, not TimescaleDB's own, not this tool's.
SELECT t.tgname, pg_get_triggerdef(t.oid), obj_description(t.oid, 'pg_trigger')
FROM pg_trigger t
JOIN pg_proc p ON p.oid = t.tgfoid
JOIN pg_namespace pn ON pn.oid = p.pronamespace
WHERE t.tgrelid = %(oid)s AND NOT t.tgisinternal
  AND pn.nspname NOT IN ('_timescaledb_functions', '_timescaledb_internal')
  AND t.tgname NOT LIKE 'rechunk\_%%'
ORDER BY t.tgname;

-- name: policies
SELECT p.polname, p.polpermissive, p.polcmd::text,
       ARRAY(SELECT CASE WHEN r = 0 THEN '' ELSE pg_get_userbyid(r)::text END
             FROM unnest(p.polroles) r ORDER BY 1),
       pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid),
       obj_description(p.oid, 'pg_policy')
FROM pg_policy p
WHERE p.polrelid = %(oid)s
ORDER BY p.polname;

-- name: table_grants
-- grantee '' is PUBLIC. The owner's own privileges come with ownership.
SELECT CASE WHEN x.grantee = 0 THEN '' ELSE pg_get_userbyid(x.grantee)::text END,
       x.privilege_type, x.is_grantable
FROM pg_class c, aclexplode(c.relacl) x
WHERE c.oid = %(oid)s AND x.grantee <> c.relowner
ORDER BY 1, 2;

-- name: column_grants
SELECT a.attname, CASE WHEN x.grantee = 0 THEN '' ELSE pg_get_userbyid(x.grantee)::text END,
       x.privilege_type, x.is_grantable
FROM pg_attribute a, aclexplode(a.attacl) x
WHERE a.attrelid = %(oid)s AND a.attnum > 0 AND NOT a.attisdropped AND a.attacl IS NOT NULL
ORDER BY 1, 2, 3;

-- name: dependents
-- Objects that reach the table by its oid and would silently keep using the old table after
-- a rename swap, and that the swap cannot carry over: materialized views, views inside
-- TimescaleDB's schemas that belong to no continuous aggregate of the table, functions with
-- SQL-standard bodies, other tables' policies that query it, foreign keys pointing at it, and
-- scheduled jobs. Plain views and the continuous aggregates built on the table are not listed:
-- the cutover re-points them (dependent_views, continuous_aggregate_views).
SELECT DISTINCT CASE v.relkind WHEN 'm' THEN 'materialized view' ELSE 'view' END AS kind,
       v.oid::regclass::text
FROM pg_depend d
JOIN pg_rewrite w ON d.classid = 'pg_rewrite'::regclass AND w.oid = d.objid
JOIN pg_class v ON v.oid = w.ev_class
JOIN pg_namespace vn ON vn.oid = v.relnamespace
WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = %(oid)s AND v.oid <> %(oid)s
  AND (v.relkind <> 'v' OR vn.nspname LIKE '\_timescaledb%%'
       OR EXISTS (SELECT FROM _timescaledb_catalog.continuous_agg ca
                  WHERE ca.user_view_schema = vn.nspname AND ca.user_view_name = v.relname))
  -- The views of continuous aggregates built directly on the table are carried over by the
  -- swap (continuous_aggregate_views); those of any other aggregate are not.
  AND NOT EXISTS (SELECT FROM _timescaledb_catalog.continuous_agg ca
                  WHERE ca.raw_hypertable_id = %(hypertable_id)s
                    AND (vn.nspname, v.relname) IN ((ca.user_view_schema, ca.user_view_name),
                                                    (ca.partial_view_schema, ca.partial_view_name),
                                                    (ca.direct_view_schema, ca.direct_view_name)))
UNION ALL
SELECT DISTINCT 'function', d.objid::regprocedure::text
FROM pg_depend d
WHERE d.classid = 'pg_proc'::regclass AND d.refclassid = 'pg_class'::regclass
  AND d.refobjid = %(oid)s
UNION ALL
SELECT DISTINCT 'policy', format('%%s on %%s', p.polname, p.polrelid::regclass)
FROM pg_depend d
JOIN pg_policy p ON d.classid = 'pg_policy'::regclass AND p.oid = d.objid
WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = %(oid)s AND p.polrelid <> %(oid)s
UNION ALL
SELECT 'foreign key', format('%%s on %%s', k.conname, k.conrelid::regclass)
FROM pg_constraint k
WHERE k.contype = 'f' AND k.confrelid = %(oid)s AND k.conrelid <> %(oid)s
UNION ALL
SELECT 'job', format('job %%s (%%s)', j.id, j.proc_name)
FROM _timescaledb_config.bgw_job j
WHERE j.hypertable_id = %(hypertable_id)s
ORDER BY 1, 2;

-- name: dependent_views
-- Plain views that select from the table: after the renames, CREATE OR REPLACE VIEW with the
-- same (schema-qualified) definition and options makes them read the table now carrying the
-- live name; grants, owner, comments and views built on them are kept (same oid).
SELECT DISTINCT v.oid::regclass::text, pg_get_viewdef(v.oid), v.reloptions
FROM pg_depend d
JOIN pg_rewrite w ON d.classid = 'pg_rewrite'::regclass AND w.oid = d.objid
JOIN pg_class v ON v.oid = w.ev_class
JOIN pg_namespace vn ON vn.oid = v.relnamespace
WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = %(oid)s AND v.oid <> %(oid)s
  AND v.relkind = 'v' AND vn.nspname NOT LIKE '\_timescaledb%%'
  AND NOT EXISTS (SELECT FROM _timescaledb_catalog.continuous_agg ca
                  WHERE ca.user_view_schema = vn.nspname AND ca.user_view_name = v.relname)
ORDER BY 1;

-- name: continuous_aggregate_views
-- The continuous aggregates built directly on the table (TSL edition; hierarchical ones are
-- built on these, not on the table, and need nothing): each one's three views, which reach the
-- table by oid. The user view (real-time: materialized buckets UNION ALL the table above the
-- watermark), the partial view (what a refresh materializes from) and the direct view (what
-- TimescaleDB rebuilds the user view from). Deparsed with search_path = pg_catalog, like
-- dependent_views, so CREATE OR REPLACE VIEW after the renames resolves the table's name to the
-- table carrying it; the views keep their oids, owners, grants, and the aggregates on them.
SELECT format('%%I.%%I', ca.user_view_schema, ca.user_view_name), v.view_name,
       pg_get_viewdef(v.view_name::regclass), c.reloptions
FROM _timescaledb_catalog.continuous_agg ca
CROSS JOIN LATERAL (VALUES (1, format('%%I.%%I', ca.partial_view_schema, ca.partial_view_name)),
                           (2, format('%%I.%%I', ca.direct_view_schema, ca.direct_view_name)),
                           (3, format('%%I.%%I', ca.user_view_schema, ca.user_view_name)))
     AS v (position, view_name)
JOIN pg_class c ON c.oid = v.view_name::regclass
WHERE ca.raw_hypertable_id = %(hypertable_id)s
ORDER BY ca.mat_hypertable_id, v.position;

-- name: invalidation_trigger
-- TimescaleDB's invalidation trigger on the table (its argument is the hypertable id): present
-- when continuous aggregates are built on it and invalidations are collected by trigger (the
-- default; 2.22's optional WAL-based collection has none).
SELECT t.tgfoid::regproc::text
FROM pg_trigger t
WHERE t.tgrelid = %(oid)s AND t.tgname = 'ts_cagg_invalidation_trigger';

-- name: catalogue_writable
-- Re-pointing continuous aggregates writes TimescaleDB's catalogue, which belongs to the
-- extension's owner (a superuser): TimescaleDB has no public API to move an aggregate to another
-- hypertable.
-- (has_table_privilege is true when any of several privileges listed is held: one per call.)
SELECT bool_and(has_table_privilege(t, 'UPDATE'))
       AND has_table_privilege('_timescaledb_catalog.continuous_aggs_invalidation_threshold',
                               'DELETE')
FROM unnest(ARRAY['_timescaledb_catalog.continuous_agg',
                  '_timescaledb_catalog.continuous_aggs_invalidation_threshold',
                  '_timescaledb_catalog.continuous_aggs_hypertable_invalidation_log']) t;

-- name: chunks
-- Each chunk with the expression of its dimension constraints: exactly the rows it may hold,
-- usable as a WHERE clause on any table with the same columns.
SELECT format('%%I.%%I', c.schema_name, c.table_name),
       ic.range_start, ic.range_end,
       (SELECT string_agg(pg_get_expr(k.conbin, k.conrelid), ' AND ' ORDER BY k.conname)
        FROM _timescaledb_catalog.chunk_constraint cc
        JOIN pg_constraint k ON k.conrelid = format('%%I.%%I', c.schema_name, c.table_name)::regclass
                            AND k.conname = cc.constraint_name
        WHERE cc.chunk_id = c.id AND cc.dimension_slice_id IS NOT NULL)
FROM _timescaledb_catalog.chunk c
JOIN timescaledb_information.chunks ic
  ON ic.chunk_schema = c.schema_name AND ic.chunk_name = c.table_name
WHERE c.hypertable_id = %(hypertable_id)s AND NOT c.dropped
ORDER BY ic.range_start, 1;

-- name: chunk_blocks
-- Heap blocks now, and rows per block as last analysed (for sizing batches).
SELECT pg_relation_size(c.oid) / current_setting('block_size')::bigint,
       CASE WHEN c.relpages > 0 AND c.reltuples > 0 THEN c.reltuples / c.relpages END
FROM pg_class c
WHERE c.oid = %(chunk)s::regclass;

-- name: owned_sequences
-- Sequences owned by a column (serial): they move to the new table at cutover, or dropping
-- the old table at finalize would drop them from under the new table's defaults.
SELECT d.objid::regclass::text, a.attname
FROM pg_depend d
JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
  AND d.refobjid = %(oid)s AND d.deptype = 'a'
ORDER BY 1;

-- name: table_exists
SELECT to_regclass(%(name)s) IS NOT NULL;

-- ---------------------------------------------------------------------------------------------
-- Building the new table.
-- ---------------------------------------------------------------------------------------------

-- name: create_hypertable
SELECT create_hypertable(%(table)s::regclass, by_range(%(column)s, %(interval)s::interval),
                         create_default_indexes => false);

-- name: add_hash_dimension
SELECT add_dimension(%(table)s::regclass, by_hash(%(column)s, %(partitions)s));

-- name: mirror_function
-- The dual write: every row the live table stores is stored in the other table by the same
-- transaction. A statement-level AFTER INSERT trigger with a transition table (TimescaleDB
-- >= 2.18 on hypertables): one INSERT ... SELECT per ingest statement instead of one per row,
-- and the transition table holds only the rows really inserted, so a staged merge's
-- ON CONFLICT DO NOTHING mirrors exactly what the live table kept; COPY fires it too.
CREATE FUNCTION {function}() RETURNS trigger
    LANGUAGE plpgsql AS
$mirror$
BEGIN
    BEGIN
        -- Plain INSERT first (ON CONFLICT's speculative insertion costs more), falling back
        -- only when the copy had already carried one of these rows over.
        INSERT INTO {target} ({columns}) SELECT {columns} FROM rechunk_mirrored_rows;
    EXCEPTION WHEN unique_violation THEN
        INSERT INTO {target} ({columns}) SELECT {columns} FROM rechunk_mirrored_rows
        ON CONFLICT DO NOTHING;
    END;
    RETURN NULL;
END
$mirror$;

-- name: mirror_trigger
CREATE TRIGGER {trigger} AFTER INSERT ON {table}
    REFERENCING NEW TABLE AS rechunk_mirrored_rows
    FOR EACH STATEMENT EXECUTE FUNCTION {function}();

-- name: mirror_row_function
-- Fallback for TimescaleDB before 2.18 (no transition tables on hypertables): the same, per
-- row. AFTER (not BEFORE) ROW: it fires only for rows really inserted.
CREATE FUNCTION {function}() RETURNS trigger
    LANGUAGE plpgsql AS
$mirror$
BEGIN
    INSERT INTO {target} ({columns}) VALUES ({values}) ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$mirror$;

-- name: mirror_row_trigger
CREATE TRIGGER {trigger} AFTER INSERT ON {table}
    FOR EACH ROW EXECUTE FUNCTION {function}();

-- name: guard_row_trigger
CREATE TRIGGER {trigger} BEFORE UPDATE OR DELETE ON {table}
    FOR EACH ROW EXECUTE FUNCTION rpm.rechunk_refuse_change({message});

-- name: guard_truncate_trigger
CREATE TRIGGER {trigger} BEFORE TRUNCATE ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION rpm.rechunk_refuse_change({message});

-- ---------------------------------------------------------------------------------------------
-- Ending a dual write, locking, renaming and dropping tables (placeholders: identifiers only).
-- ---------------------------------------------------------------------------------------------

-- name: drop_trigger
DROP TRIGGER IF EXISTS {trigger} ON {table};

-- name: drop_function
DROP FUNCTION {function}();

-- name: drop_function_if_exists
DROP FUNCTION IF EXISTS {function}();

-- name: lock_tables
LOCK TABLE {tables} IN ACCESS EXCLUSIVE MODE;

-- name: rename_table
ALTER TABLE {table} RENAME TO {new_name};

-- name: rename_constraint
ALTER TABLE {table} RENAME CONSTRAINT {old_name} TO {new_name};

-- name: rename_index
ALTER INDEX {index} RENAME TO {new_name};

-- name: drop_table
DROP TABLE {table};

-- ---------------------------------------------------------------------------------------------
-- Continuous aggregates follow the swap (TSL edition). TimescaleDB's INTERNAL catalogue: these
-- are the only statements of the re-chunk that write it. The three tables are unchanged from
-- 2.19 to 2.22 (no update script between them touches them; 2.22 only added the per-aggregate
-- continuous_aggs_materialization_ranges, keyed by the materialization hypertable), and they are
-- covered by tests/integration/test_rechunk.py
-- (test_rollups_and_rolled_up_history_survive_cutover_rollback_and_finalize).
-- Everything keyed by the MATERIALIZATION hypertable (materialized rows, watermark, per-aggregate
-- invalidation logs, refresh policies, hierarchical aggregates) is left alone: nothing is
-- copied or recomputed, so rolled-up history older than the raw data cannot be lost. Only what
-- is keyed by the RAW hypertable moves to the table taking the live name, in the swap's
-- transaction: which table the aggregates read, the invalidation threshold (below it inserts
-- are logged as invalidations), and the raw invalidations not yet processed. The two tables
-- hold the same rows (verified, then dual-written), so every bucket computes the same either way.
-- ---------------------------------------------------------------------------------------------

-- name: repoint_continuous_aggregates
UPDATE _timescaledb_catalog.continuous_agg
SET raw_hypertable_id = %(to_id)s
WHERE raw_hypertable_id = %(from_id)s;

-- name: forget_invalidation_threshold
-- The table taking the aggregates never had any; a stale row would win over the moved one.
DELETE FROM _timescaledb_catalog.continuous_aggs_invalidation_threshold
WHERE hypertable_id = %(to_id)s;

-- name: move_invalidation_threshold
UPDATE _timescaledb_catalog.continuous_aggs_invalidation_threshold
SET hypertable_id = %(to_id)s
WHERE hypertable_id = %(from_id)s;

-- name: move_invalidation_log
UPDATE _timescaledb_catalog.continuous_aggs_hypertable_invalidation_log
SET hypertable_id = %(to_id)s
WHERE hypertable_id = %(from_id)s;

-- name: drop_invalidation_trigger
DROP TRIGGER ts_cagg_invalidation_trigger ON {table};

-- name: create_invalidation_trigger
-- As TimescaleDB creates it (cagg_add_trigger_hypertable): row level, after every change, the
-- hypertable id as its one argument. On a hypertable, CREATE TRIGGER reaches every chunk.
CREATE TRIGGER ts_cagg_invalidation_trigger AFTER INSERT OR UPDATE OR DELETE ON {table}
    FOR EACH ROW EXECUTE FUNCTION {function}({hypertable_id});

-- ---------------------------------------------------------------------------------------------
-- Ledger.
-- ---------------------------------------------------------------------------------------------

-- name: lock_table_runs
-- Session lock: one rechunk process per table; a killed process releases it with its session
-- (waiting a few seconds, for a just-killed process's backend to notice and end).
SELECT pg_advisory_lock(hashtext('rpmstore.rechunk'), hashtext(%(table)s));

-- name: session_lock_timeout
SELECT set_config('lock_timeout', %(timeout)s, false);

-- name: unlock_table_runs
SELECT pg_advisory_unlock(hashtext('rpmstore.rechunk'), hashtext(%(table)s));

-- name: current_user
SELECT current_user;

-- name: active_run
SELECT run_id, kind, shadow_name, retired_name, source_dimensions, target_dimensions, state
FROM rpm.rechunk_runs
WHERE table_schema = %(schema)s AND table_name = %(name)s AND state IN ('copying', 'cut_over');

-- name: insert_run
INSERT INTO rpm.rechunk_runs (kind, table_schema, table_name, shadow_name, retired_name,
                              source_dimensions, target_dimensions, operator)
VALUES (%(kind)s, %(schema)s, %(name)s, '', '', %(source_dimensions)s, %(target_dimensions)s,
        %(operator)s)
RETURNING run_id;

-- name: name_run
UPDATE rpm.rechunk_runs
SET shadow_name = %(shadow_name)s, retired_name = %(retired_name)s
WHERE run_id = %(run_id)s;

-- name: set_run_state
UPDATE rpm.rechunk_runs
SET state = %(state)s, updated_at = now(),
    cut_over_at = CASE WHEN %(state)s = 'cut_over' THEN now() ELSE cut_over_at END,
    rolled_back_at = CASE WHEN %(state)s = 'rolled_back' THEN now() ELSE rolled_back_at END,
    finalized_at = CASE WHEN %(state)s = 'finalized' THEN now() ELSE finalized_at END
WHERE run_id = %(run_id)s;

-- name: run_verified
UPDATE rpm.rechunk_runs SET verified_at = now(), updated_at = now() WHERE run_id = %(run_id)s;

-- name: add_chunk
INSERT INTO rpm.rechunk_chunks (run_id, source_chunk, range_start, range_end, predicate, operator)
VALUES (%(run_id)s, %(chunk)s, %(range_start)s, %(range_end)s, %(predicate)s, %(operator)s)
ON CONFLICT (run_id, source_chunk) DO NOTHING;

-- name: chunks_to_copy
-- A chunk that failed verification is copied again from its first block (idempotent).
SELECT source_chunk, state, total_blocks, next_block
FROM rpm.rechunk_chunks
WHERE run_id = %(run_id)s AND state IN ('pending', 'copying', 'mismatch')
ORDER BY range_start, source_chunk;

-- name: start_chunk
UPDATE rpm.rechunk_chunks
SET state = 'copying', total_blocks = %(total_blocks)s, next_block = 0,
    copy_started_at = coalesce(copy_started_at, now())
WHERE run_id = %(run_id)s AND source_chunk = %(chunk)s;

-- name: advance_chunk
UPDATE rpm.rechunk_chunks
SET next_block = %(next_block)s, batches = batches + 1, copied_rows = copied_rows + %(rows)s
WHERE run_id = %(run_id)s AND source_chunk = %(chunk)s;

-- name: finish_chunk
UPDATE rpm.rechunk_chunks
SET state = 'copied', copied_at = now()
WHERE run_id = %(run_id)s AND source_chunk = %(chunk)s;

-- name: chunks_to_verify
SELECT source_chunk, predicate
FROM rpm.rechunk_chunks
WHERE run_id = %(run_id)s AND state = 'copied'
ORDER BY range_start, source_chunk;

-- name: record_verification
UPDATE rpm.rechunk_chunks
SET state = CASE WHEN %(source_rows)s::bigint = %(target_rows)s::bigint
                  AND %(source_checksum)s::numeric = %(target_checksum)s::numeric
                 THEN 'verified' ELSE 'mismatch' END,
    source_rows = %(source_rows)s, source_checksum = %(source_checksum)s,
    target_rows = %(target_rows)s, target_checksum = %(target_checksum)s,
    verified_at = now()
WHERE run_id = %(run_id)s AND source_chunk = %(chunk)s
RETURNING state;

-- name: forget_lineage
DELETE FROM rpm.rechunk_lineage WHERE run_id = %(run_id)s AND source_chunk = %(chunk)s;

-- name: add_lineage
INSERT INTO rpm.rechunk_lineage (run_id, source_chunk, target_chunk, row_count, checksum, operator)
VALUES (%(run_id)s, %(chunk)s, %(target_chunk)s, %(rows)s, %(checksum)s, %(operator)s);

-- name: mismatched_chunks
SELECT source_chunk, source_rows, target_rows
FROM rpm.rechunk_chunks
WHERE run_id = %(run_id)s AND state <> 'verified'
ORDER BY range_start, source_chunk;

-- name: forget_reconciliation
DELETE FROM rpm.rechunk_reconciliation WHERE run_id = %(run_id)s;

-- name: reconciliation
SELECT day, old_rows, new_rows, difference
FROM rpm.rechunk_reconciliation
WHERE run_id = %(run_id)s
ORDER BY day;

-- name: runs
SELECT r.run_id, r.kind, format('%%I.%%I', r.table_schema, r.table_name), r.state,
       r.target_dimensions, r.operator, r.started_at, r.cut_over_at, r.finalized_at,
       count(c.source_chunk), count(c.source_chunk) FILTER (WHERE c.state = 'verified'),
       coalesce(sum(c.copied_rows), 0)
FROM rpm.rechunk_runs r
LEFT JOIN rpm.rechunk_chunks c USING (run_id)
GROUP BY r.run_id
ORDER BY r.run_id;

-- ---------------------------------------------------------------------------------------------
-- Copy, verification, reconciliation: {placeholders} are identifiers (and the chunk predicate,
-- deparsed from the catalogue by pg_get_expr, never built from input).
-- ---------------------------------------------------------------------------------------------

-- name: copy_batch
-- One range of the source chunk's heap blocks (a TID range scan: no index needed, and the same
-- range is the same rows when a killed batch is repeated). Plain INSERT first: it is faster
-- than ON CONFLICT's speculative insertion, and conflicts are rare (only rows the dual write
-- already carried over).
INSERT INTO {target} ({columns})
SELECT {columns} FROM {chunk}
WHERE ctid >= %(first)s::tid AND ctid < %(last)s::tid;

-- name: merge_batch
-- The same batch when some of its rows are already in the new table.
INSERT INTO {target} ({columns})
SELECT {columns} FROM {chunk}
WHERE ctid >= %(first)s::tid AND ctid < %(last)s::tid
ON CONFLICT DO NOTHING;

-- name: source_checksum
-- Order-independent: the sum of a 64-bit hash of every row, all columns (each hashed by its
-- type's own extended hash function: no text conversion), summed as numeric (no overflow).
SELECT count(*), coalesce(sum(hash_record_extended(ROW({row}), 0)), 0)
FROM {chunk} t;

-- name: target_checksum
SELECT t.tableoid::regclass::text, count(*), coalesce(sum(hash_record_extended(ROW({row}), 0)), 0)
FROM {target} t
WHERE {predicate}
GROUP BY 1
ORDER BY 1;

-- name: reconcile
-- One statement, one snapshot: both tables are read as of the same instant, and the dual write
-- keeps them equal in every snapshot.
WITH old AS (
    SELECT ({time} AT TIME ZONE 'UTC')::date AS day, count(*) AS n FROM {source} GROUP BY 1
), new AS (
    SELECT ({time} AT TIME ZONE 'UTC')::date AS day, count(*) AS n FROM {target} GROUP BY 1
)
INSERT INTO rpm.rechunk_reconciliation (run_id, day, old_rows, new_rows)
SELECT %(run_id)s, day, coalesce(old.n, 0), coalesce(new.n, 0)
FROM old FULL JOIN new USING (day);

-- name: qualified_name
-- As the deparsers print it (quoted only where needed).
SELECT quote_ident(%(schema)s) || '.' || quote_ident(%(name)s);
