-- Catalogue queries that describe rpmstore's schemas as sorted text rows, so two databases can be
-- compared object by object (migrations vs canonical schema, up -> down -> up round trips).
-- Internal ids (oids, hypertable ids, chunk names) are left out: they differ between builds.

-- name: relations
SELECT n.nspname, c.relname, c.relkind::text, c.relrowsecurity::text, c.relforcerowsecurity::text,
       coalesce(array_to_string(c.reloptions, ','), '')
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = ANY (%(schemas)s) AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
ORDER BY 1, 2;

-- name: columns
SELECT n.nspname, c.relname,
       row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum)::text AS position,
       a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull::text,
       coalesce(pg_get_expr(d.adbin, d.adrelid), ''), a.attidentity::text, a.attgenerated::text
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE n.nspname = ANY (%(schemas)s) AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
  AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY 1, 2, 3;

-- name: constraints
SELECT n.nspname, c.relname, k.conname, k.contype::text, pg_get_constraintdef(k.oid)
FROM pg_constraint k
JOIN pg_class c ON c.oid = k.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = ANY (%(schemas)s)
ORDER BY 1, 2, 3;

-- name: indexes
SELECT schemaname, tablename, indexname, indexdef
FROM pg_indexes
WHERE schemaname = ANY (%(schemas)s)
ORDER BY 1, 2, 3;

-- name: triggers
SELECT n.nspname, c.relname, t.tgname, pg_get_triggerdef(t.oid)
FROM pg_trigger t
JOIN pg_class c ON c.oid = t.tgrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = ANY (%(schemas)s) AND NOT t.tgisinternal
ORDER BY 1, 2, 3;

-- name: functions
SELECT n.nspname, p.proname, pg_get_function_identity_arguments(p.oid), pg_get_functiondef(p.oid)
FROM pg_proc p
JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = ANY (%(schemas)s)
ORDER BY 1, 2, 3;

-- name: function_privileges
-- Who may execute each function: the layer revokes PUBLIC's default and grants the API role.
SELECT n.nspname, p.proname, pg_get_function_identity_arguments(p.oid),
       coalesce(array_to_string(p.proacl, ','), '')
FROM pg_proc p
JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = ANY (%(schemas)s)
ORDER BY 1, 2, 3;

-- name: views
-- Continuous aggregates' views (TSL) name their materialization by internal id, which changes
-- when they are dropped and created again: compare the definitions without it.
SELECT schemaname, viewname,
       regexp_replace(definition, '(_materialized_hypertable_|cagg_watermark\()[0-9]+', '\1N',
                      'g')
FROM pg_views
WHERE schemaname = ANY (%(schemas)s)
ORDER BY 1, 2;

-- name: policies
SELECT schemaname, tablename, policyname, permissive, array_to_string(roles, ','), cmd,
       coalesce(qual, ''), coalesce(with_check, '')
FROM pg_policies
WHERE schemaname = ANY (%(schemas)s)
ORDER BY 1, 2, 3;

-- name: table_privileges
SELECT table_schema, table_name, grantee, privilege_type
FROM information_schema.role_table_grants
WHERE table_schema = ANY (%(schemas)s)
ORDER BY 1, 2, 3, 4;

-- name: hypertable_dimensions
SELECT hypertable_schema, hypertable_name, dimension_number::text, column_name,
       dimension_type, coalesce(time_interval::text, ''), coalesce(num_partitions::text, '')
FROM timescaledb_information.dimensions
WHERE hypertable_schema = ANY (%(schemas)s)
ORDER BY 1, 2, 3;

-- name: extensions
SELECT extname
FROM pg_extension
ORDER BY 1;

-- name: reference_metrics
SELECT metric_id::text, code, loinc_code, display_name, canonical_unit,
       plausible_min::text, plausible_max::text
FROM rpm.metrics
ORDER BY metric_id;

-- name: reference_metric_aliases
SELECT alias, metric_id::text
FROM rpm.metric_aliases
ORDER BY alias;

-- name: reference_unit_conversions
SELECT metric_id::text, unit, scale::text, shift::text
FROM rpm.unit_conversions
ORDER BY metric_id, unit;
