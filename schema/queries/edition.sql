-- name: detect
-- current_setting(..., true) gives NULL instead of an error when the library is not preloaded.
SELECT current_setting('timescaledb.license', true),
       (SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'),
       current_setting('server_version');
