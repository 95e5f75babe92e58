-- name: callers-join
-- description: who-calls results joined with allocinfo: each caller's share applied to the
-- description: site's bytes in the host's last snapshot at or before the capture.
-- param: host str '' one host (default: every host)
WITH res AS (
    SELECT DISTINCT hostname, taken_at, site, site_function, site_key
    FROM {callers}
    WHERE ${host} = '' OR hostname = ${host}
),
snap AS (
    SELECT r.hostname, r.taken_at, r.site, MAX(h.taken_at) AS snap_at
    FROM res r JOIN {hosts} h ON h.hostname = r.hostname AND h.taken_at <= r.taken_at
    GROUP BY r.hostname, r.taken_at, r.site
),
tot AS (
    SELECT r.hostname, r.taken_at, r.site, SUM(a.bytes) AS site_bytes, SUM(a.calls) AS site_calls
    FROM res r
    JOIN snap s ON r.hostname = s.hostname AND r.taken_at = s.taken_at AND r.site = s.site
    JOIN {allocinfo} a ON a.hostname = r.hostname AND a.taken_at = s.snap_at
     AND (a.function = r.site_function OR a.site_key = r.site_key)
    GROUP BY r.hostname, r.taken_at, r.site
)
SELECT c.hostname, c.taken_at AS captured_at, c.site, c.caller, c.calls, c.share,
       c.ci_low, c.ci_high, t.site_bytes, t.site_calls,
       c.share * CAST(t.site_bytes AS DOUBLE) AS est_bytes
FROM {callers} c
LEFT JOIN tot t ON c.hostname = t.hostname AND c.taken_at = t.taken_at AND c.site = t.site
WHERE c.caller IS NOT NULL AND (${host} = '' OR c.hostname = ${host})
ORDER BY c.hostname, c.taken_at, c.site, c.share DESC NULLS LAST, c.caller
